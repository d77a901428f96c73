"""Is a Flower HTTPS endpoint up? (``/health`` on the SuperLink and on each SuperNode's runtime
port answers 200 in Flower 1.42; it is the readiness check of every process we start.)"""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path


def https_ok(address: str, ca: Path, path: str = "/health", timeout: float = 2.0) -> bool:
    """True if ``GET https://<address><path>`` answers 200 with a certificate from ``ca``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
