"""``zk0 stack ROLE``: the zk0 roles of ``docker-compose.yml`` (one image, one role per service).

The compose stack runs the layout of ``zk0 cluster`` (:mod:`deploy.cluster.local_cluster`) with one
container per process role instead of one process per role; every command line, certificate,
proxy config and report comes from the same code:

    init         one-shot: the federation's CA, SuperLink certificate and coordinator key
                 (``zk0 certs``' :func:`ensure_federation_certs`: kept when present), each site's
                 bundle (CA and coordinator.pub: public files only), the entry proxy's nginx.conf
                 (:func:`deploy.coordinator.entry_proxy.prepare_folder`), Prometheus' config and
                 rules (:func:`deploy.monitoring.prometheus_server.render_config`) and Grafana's
                 provisioning
    site-key     one-shot, one per site, in that site's own containers: the site's key, made
                 (or kept) inside the site's key volume; only its public half is copied into the
                 site's bundle, where ``register`` reads it. No coordinator-side container ever
                 holds a site's private key, as on a real lab's box.
    demo-data    one-shot: a demo dataset for each site whose volume holds none
    superlink    ``flower-superlink`` (:func:`superlink_cmd`): TLS, node auth, process isolation,
                 SQLite state on its volume
    superexec    the ServerApp executor (``flower-superexec`` signing with the coordinator key)
    register     one-shot: binds each site's public key (from its bundle) to its name
                 (``zk0 site register``), idempotent
    run          one-shot: submits the federation, streams it, prints the per-site MSE report

A site is ``zk0 supernode`` itself (SuperNode + site worker), as on a lab's box.

Settings are ``ZK0_*`` environment variables read by :class:`StackSettings` (compose passes them
from ``.env``; see ``.env.example``). Paths are the image's: volumes are mounted there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import SettingsError, parse_overrides

REPO = Path(__file__).resolve().parents[2]
CONNECTION = "zk0"  # the flwr connection the operator-side containers write and use


class StackSettings(BaseSettings):
    """The compose stack's settings: ``ZK0_<NAME>`` environment variables, else defaults."""

    model_config = SettingsConfigDict(env_prefix="ZK0_", extra="ignore")

    sites: str = Field("site-0,site-1,site-2,site-3", description="site names, comma-separated")
    sans: str = Field("superlink,entry-proxy", description="extra SANs of the SuperLink "
                      "certificate, comma-separated (localhost and 127.0.0.1 are always in)")
    superlink: str = Field("superlink:9093", description="host:port where the SuperLink is "
                           "reached inside the stack (all its APIs)")
    superlink_listen: str = "0.0.0.0:9093"
    superlink_tls_name: str = "localhost"  # a DNS SAN the entry proxy verifies the SuperLink as
    entry_listen: str = "0.0.0.0:8443"  # what the labs dial: the entry proxy
    coordinator_metrics: str = "coordinator-metrics:9400"  # Prometheus target
    site_metrics: str = Field("site-0:9401,site-1:9402,site-2:9403,site-3:9404",
                              description="Prometheus targets of the sites, in site order")
    scrape_interval: str = "15s"
    prometheus_url: str = "http://prometheus:9090"  # Grafana's datasource
    demo_data: bool = True  # generate a demo dataset for a site whose volume has none
    demo_episodes: int = Field(12, ge=1)
    demo_frames: int = Field(60, ge=10)  # per episode
    run_config: str = ""  # KEY=VALUE ... as for `flwr run -c`, e.g. "num-server-rounds=3"
    run_timeout: float = Field(0.0, ge=0.0)  # 0: no limit
    uid: int = 49999  # owner of what the root-run init jobs write (the image's user)
    site_name: str = Field("", description="the site whose key the site-key job makes")
    # Where the volumes are mounted (the image's layout).
    certs_dir: Path = Path("/app/certs")
    # site-N's bundle at <bundles_dir>/<site>: public files only, both ways (the CA and
    # coordinator.pub from init, site-N.pub from the site's key job)
    bundles_dir: Path = Path("/app/sites")
    keys_dir: Path = Path("/app/keys")  # a site's own key volume (the site-key job, the site)
    data_dir: Path = Path("/app/data")  # site-N's data volume at <data_dir>/<site> (init)
    proxy_dir: Path = Path("/app/proxy")
    config_dir: Path = Path("/app/config")  # Prometheus and Grafana configuration
    state_dir: Path = Path("/app/state")
    runs_dir: Path = Path("/app/runs")
    metrics_dir: Path = Path("/app/metrics")
    flwr_home: Path = Path(os.environ.get("FLWR_HOME", "/app/.flwr"))

    @property
    def site_names(self) -> list[str]:
        return [s.strip() for s in self.sites.split(",") if s.strip()]

    @property
    def extra_sans(self) -> list[str]:
        return [s.strip() for s in self.sans.split(",") if s.strip()]

    def metrics_targets(self) -> dict[str, str]:
        targets = [t.strip() for t in self.site_metrics.split(",") if t.strip()]
        if len(targets) != len(self.site_names):
            raise SettingsError(
                f"ZK0_SITE_METRICS has {len(targets)} targets for {len(self.site_names)} sites "
                f"(ZK0_SITES={self.sites!r}): one host:port per site, in the same order"
            )
        return dict(zip(self.site_names, targets, strict=True))

    def overrides(self) -> dict[str, Any]:
        """ZK0_RUN_CONFIG as run-config overrides, with the run folder on the runs volume."""
        values = parse_overrides(shlex.split(self.run_config))
        return {"min-sites": len(self.site_names), **values,
                "output-dir": str(self.runs_dir)}

    def site_bundle(self, site: str) -> Path:
        return self.bundles_dir / site

    def dataset_root(self, site: str) -> Path:
        """Inside the site's data volume (a dataset is swapped in whole, never the mount)."""
        return self.data_dir / site / "dataset"


def _say(text: str) -> None:
    print(f"[zk0 stack] {text}", flush=True)


def _chown_tree(top: Path, uid: int) -> None:
    """Give what a root-run init job wrote to the image's user (no-op when not root)."""
    if os.geteuid() != 0:
        return
    for path in [top, *top.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)


def _copy(src: Path, dst: Path, mode: int) -> None:
    from common import atomic

    atomic.write_bytes(dst, src.read_bytes(), mode)


# -- one-shot jobs -----------------------------------------------------------------------------


def init(s: StackSettings) -> int:
    """The coordinator's certificates and key (kept when present), site bundles (public files
    only), proxy and monitoring config. No site key: each site makes its own (``site-key``)."""
    from certs.federation import DEFAULT_SANS, ensure_federation_certs
    from certs.files import private_dir
    from deploy.coordinator.entry_proxy import ProxySettings, prepare_folder

    sans = list(dict.fromkeys([*DEFAULT_SANS, *s.extra_sans]))
    made = ensure_federation_certs(s.certs_dir, sans=sans)
    for path, action in made.actions.items():
        _say(f"{action.split(':', 1)[0]:<8} {path}")
    for site in s.site_names:  # what an earlier zk0 made here for the sites: not the coordinator's
        for stale in (s.certs_dir / f"{site}.key", s.certs_dir / f"{site}.pub",
                      s.site_bundle(site) / f"{site}.key"):
            if stale.is_file():
                stale.unlink()
                _say(f"removed  {stale} (a site's key is made in the site's own volume)")
    _chown_tree(s.certs_dir, s.uid)
    for site in s.site_names:  # each site gets the CA and the coordinator's public key
        bundle = private_dir(s.site_bundle(site), tighten=True)
        _copy(made.ca_cert, bundle / "ca.crt", 0o644)
        _copy(made.coordinator_pub, bundle / "coordinator.pub", 0o644)
        _chown_tree(bundle, s.uid)
    tls = private_dir(s.proxy_dir / "tls", tighten=True)
    proxy = ProxySettings(
        listen=s.entry_listen, superlink=s.superlink, cert=tls / "superlink.crt",
        key=tls / "superlink.key", ca=tls / "ca.crt", folder=s.proxy_dir,
        superlink_tls_name=s.superlink_tls_name,
    )
    _copy(made.server_cert, proxy.cert, 0o644)
    _copy(made.server_key, proxy.key, 0o600)
    _copy(made.ca_cert, proxy.ca, 0o644)
    _say(f"entry proxy config {prepare_folder(proxy)}: {s.entry_listen} -> {s.superlink}")
    _chown_tree(s.proxy_dir, s.uid)
    write_monitoring_config(s)
    return 0


def write_monitoring_config(s: StackSettings) -> None:
    """Prometheus' config (the project's, with the stack's targets) and rules; Grafana's
    provisioning (datasource at ZK0_PROMETHEUS_URL) and dashboards. World-readable: Prometheus
    and Grafana run as their own users, and nothing here is secret."""
    from common import atomic
    from deploy.monitoring.prometheus_server import CONFIG, render_config

    prom = s.config_dir / "prometheus"
    config = render_config(s.coordinator_metrics, s.metrics_targets(),
                           scrape_interval=s.scrape_interval)
    config["rule_files"] = ["rules/*.yml"]  # relative to the config file: the copies below
    shutil.rmtree(prom / "rules", ignore_errors=True)
    shutil.copytree(CONFIG.parent / "rules", prom / "rules")
    atomic.write_bytes(prom / "prometheus.yml", yaml.safe_dump(config, sort_keys=False).encode())
    grafana_src = REPO / "deploy" / "monitoring" / "grafana"
    grafana = s.config_dir / "grafana"
    datasources = yaml.safe_load((grafana_src / "provisioning/datasources/zk0.yml").read_text())
    for source in datasources["datasources"]:
        source["url"] = s.prometheus_url
    atomic.write_bytes(grafana / "provisioning/datasources/zk0.yml",
                       yaml.safe_dump(datasources, sort_keys=False).encode())
    providers = yaml.safe_load((grafana_src / "provisioning/dashboards/zk0.yml").read_text())
    for provider in providers["providers"]:
        provider["options"]["path"] = str(grafana / "dashboards")
    atomic.write_bytes(grafana / "provisioning/dashboards/zk0.yml",
                       yaml.safe_dump(providers, sort_keys=False).encode())
    shutil.rmtree(grafana / "dashboards", ignore_errors=True)
    shutil.copytree(grafana_src / "dashboards", grafana / "dashboards")
    (grafana / "provisioning/plugins").mkdir(parents=True, exist_ok=True)  # Grafana wants them
    (grafana / "provisioning/alerting").mkdir(parents=True, exist_ok=True)
    for path in [s.config_dir, *s.config_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    _say(f"Prometheus config {prom / 'prometheus.yml'}; Grafana provisioning {grafana}")


def site_key(s: StackSettings) -> int:
    """ZK0_SITE_NAME's key, made (or kept) in the site's own key volume; only its public half
    goes into the site's bundle, for ``register``. Runs in the site's containers, never in the
    coordinator's."""
    from certs.errors import CertError
    from certs.federation import ensure_site_key
    from certs.files import private_dir

    site = s.site_name
    if site not in s.site_names:
        _say(f"ZK0_SITE_NAME={site!r}: expected one of ZK0_SITES ({', '.join(s.site_names)})")
        return 2
    try:
        priv, pub, done = ensure_site_key(s.keys_dir, site)
    except CertError as err:
        _say(f"{site}: {err}")
        return 1
    for path, action in done.items():
        _say(f"{action.split(':', 1)[0]:<8} {path}")
    bundle = private_dir(s.site_bundle(site))
    _copy(pub, bundle / pub.name, 0o644)
    _chown_tree(s.keys_dir, s.uid)  # no-op unless run as root
    _say(f"{site}: private key {priv} stays in this site's volume; public key -> "
         f"{bundle / pub.name}")
    return 0


def demo_data(s: StackSettings) -> int:
    """A demo dataset in each site's data volume that holds none (ZK0_DEMO_DATA=false: a
    missing dataset is an error instead)."""
    missing = [site for site in s.site_names
               if not (s.dataset_root(site) / "meta" / "info.json").is_file()]
    for site in s.site_names:
        if site not in missing:
            _say(f"{site}: dataset present in {s.dataset_root(site)}, kept")
    if not missing:
        return 0
    if not s.demo_data:
        _say(f"no dataset for {', '.join(missing)} (expected {s.dataset_root(missing[0])}) "
             "and ZK0_DEMO_DATA=false")
        return 1
    from demo_data import DemoSpec
    from demo_data.writer import make_demo_site

    spec = DemoSpec(num_sites=len(s.site_names), episodes_per_site=s.demo_episodes,
                    frames_per_episode=s.demo_frames)
    for index, site in enumerate(s.site_names):
        if site in missing:
            root = make_demo_site(s.dataset_root(site), index, spec, overwrite=True)
            _say(f"{site}: demo dataset written to {root}")
            _chown_tree(s.data_dir / site, s.uid)
    return 0


def register(s: StackSettings) -> int:
    """Bind each site's public key (from its bundle, put there by the site's own key job) to
    its name; a binding already there (a restart) is kept."""
    from common import signing
    from deploy.coordinator.site_registry import SiteRegistryError, list_nodes, register_site
    from deploy.flower import flwr_cli

    ca = s.certs_dir / "ca.crt"
    flwr_cli.write_connection_config(s.flwr_home, CONNECTION, s.superlink, ca)
    known = {n.name: n for n in list_nodes(s.flwr_home, CONNECTION) if n.active}
    for site in s.site_names:
        pub = s.site_bundle(site) / f"{site}.pub"
        if not pub.is_file():
            _say(f"{site}: no public key at {pub}: the site's key job ({site}-key) has not run")
            return 1
        if site in known and known[site].fingerprint == signing.fingerprint(
                signing.load_public_key(pub, "site public key")):
            _say(f"{site}: already registered as node {known[site].node_id}, kept")
            continue
        try:
            node_id = register_site(s.flwr_home, pub, site, CONNECTION)
        except SiteRegistryError as err:
            _say(f"{site}: {err}")
            return 1
        _say(f"{site}: registered as node {node_id}")
    return 0


def run(s: StackSettings) -> int:
    """Start the federation, stream its log, print the per-site held-out MSE per round."""
    import json

    from deploy.coordinator.run_follow import run_app
    from deploy.flower import flwr_cli
    from superlink.reports import format_history

    flwr_cli.write_connection_config(s.flwr_home, CONNECTION, s.superlink,
                                     s.certs_dir / "ca.crt")
    overrides = s.overrides()
    _say(f"starting the federation: {overrides}")
    logs = s.flwr_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = run_app(s.flwr_home, CONNECTION, REPO, overrides, logs,
                     timeout=s.run_timeout or None, on_line=lambda line: print(line, flush=True))
    run_dir = s.runs_dir / f"run-{result.run_id}"
    _say(f"run {result.run_id} ended {result.status!r} after {result.duration_s:.0f} s; "
         f"run folder {run_dir} (volume 'runs')")
    history_file = run_dir / "eval_history.json"
    if history_file.is_file():
        print("[zk0 stack] held-out action MSE per site (global model after each round):")
        print(format_history(json.loads(history_file.read_text())), flush=True)
    return 0 if result.ok else 1


# -- long-lived processes ----------------------------------------------------------------------


def _exec(cmd: list[str], env: dict[str, str]) -> int:
    """Become ``cmd`` (PID 1 of the container: signals from ``docker stop`` reach it)."""
    _say(shlex.join(cmd))
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def superlink(s: StackSettings) -> int:
    from deploy.flower.commands import superlink_cmd
    from deploy.flower.env import child_env
    from deploy.monitoring.metrics_export import parse_listen

    host, port = parse_listen(s.superlink_listen, "ZK0_SUPERLINK_LISTEN")
    c = s.certs_dir
    cmd = superlink_cmd(certfile=c / "superlink.crt", keyfile=c / "superlink.key",
                        ca_certfile=c / "ca.crt", secret_file=c / "superexec.secret",
                        database=s.state_dir / "state.db", host=host, port=port)
    return _exec(cmd, child_env(s.flwr_home))


def superexec(s: StackSettings) -> int:
    """The ServerApp executor: signs every instruction with the coordinator key; its apps
    write their metrics where ``zk0 coordinator-metrics`` serves them (a shared volume)."""
    from common.metrics import MULTIPROC_ENV
    from deploy.flower.commands import superexec_cmd
    from deploy.flower.env import child_env

    c = s.certs_dir
    env = child_env(s.flwr_home, {"ZK0_COORDINATOR_KEY": str(c / "coordinator.key"),
                                  MULTIPROC_ENV: str(s.metrics_dir)})
    return _exec(superexec_cmd(s.superlink, c / "ca.crt", c / "superexec.secret"), env)


ROLES: dict[str, Callable[[StackSettings], int]] = {
    "init": init,
    "site-key": site_key,
    "demo-data": demo_data,
    "superlink": superlink,
    "superexec": superexec,
    "register": register,
    "run": run,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``zk0 stack ROLE`` (the parser itself is made by :mod:`deploy.cli`)."""
    p.add_argument("role", choices=sorted(ROLES), help="the container's role")


def run_cli(args: argparse.Namespace) -> int:
    try:
        settings = StackSettings()
        settings.metrics_targets()  # every setting checked before any work
        settings.overrides()
        return ROLES[args.role](settings)
    except ValidationError as err:
        for item in err.errors():
            name = str(item["loc"][0]) if item["loc"] else "?"
            print(f"zk0 stack {args.role}: ZK0_{name.upper()}: {item['msg']}", file=sys.stderr)
        return 2
    except SettingsError as err:
        print(f"zk0 stack {args.role}: {err}", file=sys.stderr)
        return 2
