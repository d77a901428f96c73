"""Shared by the monitoring tests: Debian's Prometheus tools, or a skip only where allowed.

CI (``CI`` set) and root (who runs ``scripts/system-deps.sh``, which installs them) never skip:
without the tools those tests fail. Elsewhere (a developer without root) they skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
from typing import Any

import pytest

from deploy.monitoring.prometheus_server import prometheus_exe, promtool_exe


def require_prometheus() -> tuple[str, str]:
    """(prometheus, promtool) paths; skip or fail as the module docstring says."""
    prometheus, promtool = prometheus_exe(), promtool_exe()
    if prometheus and promtool:
        return prometheus, promtool
    reason = ("Debian's prometheus package (prometheus, promtool) is not installed; "
              "scripts/system-deps.sh installs it as root")
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(reason)
    pytest.skip(reason + " (not root, not CI)")


def promtool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    _, exe = require_prometheus()
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """Prometheus HTTP API: the result of an instant query (raises on an API error)."""
    return api(base_url, "query", query=expr)["result"]


def api(base_url: str, path: str, **params: str) -> Any:
    """Any other Prometheus HTTP API call (``rules``, ``alerts``, ``series`` with params)."""
    query_string = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(f"{base_url}/api/v1/{path}{query_string}",
                                timeout=30) as response:
        payload = json.load(response)
    assert payload["status"] == "success", payload
    return payload["data"]


_SELECTOR = re.compile(r"\b(zk0_[a-z0-9_]+|up)\b(\{[^}]*\})?")


def selectors(expr: str) -> list[str]:
    """The series selectors of a PromQL expression (``name{matchers}``), for data checks."""
    return sorted({name + (matchers or "") for name, matchers in _SELECTOR.findall(expr)})


def grafana_to_promql(expr: str, site: str) -> str:
    """A dashboard query as Grafana sends it: variables replaced (multi-value: every value)."""
    return (expr.replace('site=~"$site"', 'site=~".+"').replace('run=~"$run"', 'run=~".+"')
            .replace("$site", site).replace("$__rate_interval", "1m"))
