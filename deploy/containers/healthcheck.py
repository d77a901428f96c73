"""The image's ``HEALTHCHECK``: is this container's role serving? (``python -m
deploy.containers.healthcheck``)

One image runs every role, so the endpoint comes from the service's environment:
``ZK0_HEALTH_URL`` (``https://host:port/health`` for Flower's ``/health`` on the SuperLink port or
a SuperNode's runtime port, verified against ``ZK0_HEALTH_CA``; ``http://host:port/metrics`` for
a zk0 exporter). Several URLs may be given, separated by spaces: all must answer 200. Without
``ZK0_HEALTH_URL`` (one-shot jobs, the CLI) there is nothing to probe and the container counts
as healthy while it runs. Standard library only: it runs every few seconds per container.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from deploy.flower.health import https_ok


def probe(url: str, ca: Path | None, timeout: float = 5.0) -> str | None:
    """None if ``url`` answers 200, else why not (one line)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        if ca is None:
            return f"{url}: ZK0_HEALTH_CA is not set (the CA that signed the endpoint)"
        if not ca.is_file():
            return f"{url}: CA file {ca} (ZK0_HEALTH_CA) not found (yet)"
        address = parts.netloc
        ok = https_ok(address, ca, parts.path or "/", timeout=timeout)
        return None if ok else f"{url}: no 200"
    if parts.scheme == "http":
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return None if response.status == 200 else f"{url}: HTTP {response.status}"
        except OSError as err:
            return f"{url}: {err}"
    return f"{url} (ZK0_HEALTH_URL): expected an http:// or https:// URL"


def main() -> int:
    urls = os.environ.get("ZK0_HEALTH_URL", "").split()
    if not urls:
        print("no ZK0_HEALTH_URL for this role: nothing to probe")
        return 0
    ca_text = os.environ.get("ZK0_HEALTH_CA", "").strip()
    ca = Path(ca_text) if ca_text else None
    problems = [p for p in (probe(url, ca) for url in urls) if p is not None]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
