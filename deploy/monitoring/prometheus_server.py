"""A Prometheus for a local cluster: the project's config, rendered for the ports in use.

``deploy/monitoring/prometheus/prometheus.yml`` is the documented default (coordinator on 9400,
site-N on 9401 + N). A cluster on other ports (tests, ``zk0 cluster --metrics-port``) gets a copy
with its own targets and absolute rule paths, written next to its data; everything else (jobs,
``honor_labels``, rule files) stays the project's. Prometheus itself is Debian's package
(``scripts/system-deps.sh`` installs it), started as a :class:`ManagedProcess` and stopped by
PID like every other process here.
"""

from __future__ import annotations

import copy
import shutil
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from common import atomic
from deploy.flower.processes import ManagedProcess

PROMETHEUS_DIR = Path(__file__).resolve().parent / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
COORDINATOR_JOB = "zk0-coordinator"
SITES_JOB = "zk0-sites"


def render_config(
    coordinator: str | None,
    sites: Mapping[str, str],
    *,
    scrape_interval: str | None = None,
    template: Path = CONFIG,
) -> dict[str, Any]:
    """The project's config with these targets (``host:port``) and absolute rule paths."""
    config = copy.deepcopy(yaml.safe_load(template.read_text()))
    base = template.parent
    config["rule_files"] = [str((base / f).resolve()) for f in config.get("rule_files", [])]
    if scrape_interval is not None:
        config["global"].update(
            scrape_interval=scrape_interval, evaluation_interval=scrape_interval,
            scrape_timeout=scrape_interval,
        )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs[COORDINATOR_JOB]["static_configs"] = (
        [{"targets": [coordinator]}] if coordinator else []
    )
    jobs[SITES_JOB]["static_configs"] = [
        {"targets": [address], "labels": {"site": name}} for name, address in sites.items()
    ]
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    return atomic.write_bytes(path, yaml.safe_dump(dict(config), sort_keys=False).encode())


def prometheus_exe() -> str | None:
    """Debian's ``prometheus`` binary, if installed."""
    return shutil.which("prometheus")


def promtool_exe() -> str | None:
    return shutil.which("promtool")


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 with a rendered config and its own data folder."""

    def __init__(self, work_dir: Path, config: Mapping[str, Any], port: int,
                 host: str = "127.0.0.1") -> None:
        exe = prometheus_exe()
        if exe is None:
            raise FileNotFoundError(
                "prometheus is not installed (Debian: apt-get install prometheus, or run "
                "scripts/system-deps.sh as root)"
            )
        self.work_dir = Path(work_dir).resolve()
        self.config_path = write_config(self.work_dir / "prometheus.yml", config)
        self.address = f"{host}:{port}"
        self.process = ManagedProcess(
            "prometheus",
            [
                exe,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.work_dir / 'data'}",
                f"--web.listen-address={self.address}",
                "--log.level=warn",
            ],
            self.work_dir / "prometheus.log",
            cwd=self.work_dir,
        )

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        self.process.start()
        self.process.wait_healthy(self.ready, timeout, what=f"ready on {self.url}")
        return self

    def stop(self) -> None:
        self.process.stop()
