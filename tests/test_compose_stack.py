"""``zk0 stack``'s one-shot jobs, run here on folders instead of volumes (fast, no Docker).

What the compose stack's containers find depends on them: the certificates kept across
restarts, each site's key made in the site's own folder and only its public half in the bundle
the coordinator reads (no site private key anywhere on the coordinator's side), an nginx.conf
nginx accepts,
a Prometheus config promtool accepts with the stack's targets, Grafana's provisioning pointing
at the stack's Prometheus, demo data only where a site has none.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from key_files import site_private_keys
from prometheus_tools import promtool

from common.settings import SettingsError
from deploy.cluster.local_cluster import free_port
from deploy.containers import compose_stack
from deploy.containers.compose_stack import StackSettings

SITES = ["site-0", "site-1"]


def _settings(tmp_path: Path, **extra) -> StackSettings:
    values = {
        "sites": ",".join(SITES), "superlink": f"127.0.0.1:{free_port()}",
        "entry_listen": f"127.0.0.1:{free_port()}", "coordinator_metrics": "127.0.0.1:9400",
        "site_metrics": "127.0.0.1:9401,127.0.0.1:9402", "prometheus_url": "http://prom:9090",
        "certs_dir": tmp_path / "certs", "bundles_dir": tmp_path / "sites",
        "data_dir": tmp_path / "data", "proxy_dir": tmp_path / "proxy",
        "config_dir": tmp_path / "config", "demo_episodes": 3, "demo_frames": 10,
    }
    return StackSettings(**{**values, **extra})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _site_key(s: StackSettings, site: str, keys: Path) -> int:
    """The ``site-key`` job of one site, with that site's own key folder."""
    return compose_stack.site_key(s.model_copy(update={"site_name": site, "keys_dir": keys}))


def _coordinator_side(s: StackSettings) -> list[Path]:
    """Every folder the coordinator's containers mount (the bundles included)."""
    return [s.certs_dir, s.bundles_dir, s.proxy_dir, s.config_dir]


def test_init_makes_what_is_missing_and_keeps_what_exists(tmp_path, nginx) -> None:
    s = _settings(tmp_path)
    assert compose_stack.init(s) == 0
    ca = (s.certs_dir / "ca.crt").read_bytes()
    for site in SITES:  # public files only: the site makes its own key
        bundle = s.site_bundle(site)
        assert sorted(p.name for p in bundle.iterdir()) == ["ca.crt", "coordinator.pub"]
        assert _mode(bundle) == 0o700
    assert not list(s.certs_dir.glob("site-*"))
    assert _mode(s.proxy_dir / "tls" / "superlink.key") == 0o600
    conf = s.proxy_dir / "nginx.conf"
    assert f"listen {s.entry_listen} ssl;" in conf.read_text()
    check = subprocess.run([nginx, "-t", "-p", f"{s.proxy_dir}/", "-c", str(conf), "-e",
                            str(s.proxy_dir / "logs" / "error.log")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    # a second init (a restarted stack) keeps the CA, hence every registered key stays valid
    assert compose_stack.init(s) == 0
    assert (s.certs_dir / "ca.crt").read_bytes() == ca


def test_each_site_makes_its_key_in_its_own_folder_and_only_the_public_half_leaves(
        tmp_path) -> None:
    s = _settings(tmp_path)
    assert compose_stack.init(s) == 0
    keys = {site: tmp_path / f"{site}-keys" for site in SITES}  # each site's own volume
    for site in SITES:
        assert _site_key(s, site, keys[site]) == 0
        key, pub = keys[site] / f"{site}.key", keys[site] / f"{site}.pub"
        assert _mode(keys[site]) == 0o700 and _mode(key) == 0o600
        bundle = s.site_bundle(site)
        assert sorted(p.name for p in bundle.iterdir()) == sorted(
            ["ca.crt", "coordinator.pub", f"{site}.pub"])
        assert (bundle / f"{site}.pub").read_bytes() == pub.read_bytes()
    pubs = {site: s.site_bundle(site) / f"{site}.pub" for site in SITES}
    assert site_private_keys(_coordinator_side(s), pubs) == []
    assert len(site_private_keys(keys.values(), pubs)) == len(SITES)  # where they belong
    # a restart keeps every key (the SuperLink knows it), and init keeps its hands off them
    before = {site: (keys[site] / f"{site}.key").read_bytes() for site in SITES}
    assert compose_stack.init(s) == 0
    for site in SITES:
        assert _site_key(s, site, keys[site]) == 0
        assert (keys[site] / f"{site}.key").read_bytes() == before[site]
        assert (s.site_bundle(site) / f"{site}.pub").read_bytes() == \
            (keys[site] / f"{site}.pub").read_bytes()
    # a name not in the stack is refused before anything is made
    assert _site_key(s, "site-9", tmp_path / "site-9-keys") == 2
    assert not (tmp_path / "site-9-keys").exists()


def test_the_key_scan_finds_a_site_key_on_the_coordinators_side(tmp_path) -> None:
    """The check above can fail: a site key copied into the certs, or pasted into a log."""
    s = _settings(tmp_path)
    assert compose_stack.init(s) == 0
    keys = tmp_path / "site-0-keys"
    assert _site_key(s, "site-0", keys) == 0
    pubs = {"site-0": s.site_bundle("site-0") / "site-0.pub"}
    (s.certs_dir / "copy.key").write_bytes((keys / "site-0.key").read_bytes())
    logs = s.proxy_dir / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "error.log").write_bytes(b"x " + (keys / "site-0.key").read_bytes() + b" y\n")
    found = site_private_keys(_coordinator_side(s), pubs)
    assert found == [f"{s.certs_dir / 'copy.key'}: the private key of site-0",
                     f"{logs / 'error.log'}: the private key of site-0"], found


def test_init_removes_the_site_keys_an_earlier_stack_left_on_the_coordinator(tmp_path) -> None:
    """Stacks before the sites made their own keys kept them in the certs volume."""
    from certs import ensure_federation_certs

    s = _settings(tmp_path)
    ensure_federation_certs(s.certs_dir, sites=SITES)  # what the old init made
    assert compose_stack.init(s) == 0
    assert not list(s.certs_dir.glob("site-*"))
    assert (s.certs_dir / "coordinator.key").is_file()  # the coordinator's own key stays


def test_monitoring_config_has_the_stack_targets_and_passes_promtool(tmp_path) -> None:
    s = _settings(tmp_path)
    compose_stack.write_monitoring_config(s)
    config_path = s.config_dir / "prometheus" / "prometheus.yml"
    out = promtool("check", "config", str(config_path))
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(config_path.read_text())
    sites = next(j for j in config["scrape_configs"] if j["job_name"] == "zk0-sites")
    assert [(c["targets"], c["labels"]["site"]) for c in sites["static_configs"]] == [
        (["127.0.0.1:9401"], "site-0"), (["127.0.0.1:9402"], "site-1")]
    grafana = s.config_dir / "grafana"
    [source] = yaml.safe_load(
        (grafana / "provisioning/datasources/zk0.yml").read_text())["datasources"]
    assert source["url"] == "http://prom:9090"
    [provider] = yaml.safe_load(
        (grafana / "provisioning/dashboards/zk0.yml").read_text())["providers"]
    dashboards = Path(provider["options"]["path"])
    assert {p.name for p in dashboards.glob("*.json")} >= {"zk0-federation.json"}
    for path in [s.config_dir, *s.config_dir.rglob("*")]:  # readable by other users
        assert _mode(path) & 0o004, path


def test_demo_data_only_where_a_site_has_none(tmp_path) -> None:
    s = _settings(tmp_path)
    assert compose_stack.demo_data(s) == 0
    info = s.dataset_root("site-0") / "meta" / "info.json"
    assert json.loads(info.read_text())["total_episodes"] == 3
    before = info.stat().st_mtime_ns
    assert compose_stack.demo_data(s) == 0  # kept
    assert info.stat().st_mtime_ns == before
    off = _settings(tmp_path / "other", demo_data=False)
    assert compose_stack.demo_data(off) == 1


def test_settings_are_checked_before_any_work(tmp_path) -> None:
    with pytest.raises(SettingsError, match="ZK0_SITE_METRICS has 1 targets for 2 sites"):
        _settings(tmp_path, site_metrics="127.0.0.1:9401").metrics_targets()
    s = _settings(tmp_path, run_config="num-server-rounds=3 policy=smolvla-tiny")
    assert s.overrides() == {"min-sites": 2, "num-server-rounds": 3, "policy": "smolvla-tiny",
                             "output-dir": "/app/runs"}
    with pytest.raises(SettingsError):
        _settings(tmp_path, run_config="num-server-rounds").overrides()


def test_the_image_pins_what_pyproject_pins() -> None:
    """deploy/containers/docker/requirements.txt (the image's dependency layer) is regenerated with
    scripts/image-requirements.py when a pin in pyproject.toml changes."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    repo = Path(__file__).resolve().parent.parent
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    requirements = repo / "deploy" / "containers" / "docker" / "requirements.txt"
    lines = requirements.read_text().splitlines()
    image = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    for text in project["dependencies"]:
        req = Requirement(text)
        [spec] = req.specifier
        assert image.get(canonicalize_name(req.name)) == spec.version, (
            f"{req.name}: pyproject pins {spec.version}, the image "
            f"{image.get(canonicalize_name(req.name))}; run scripts/image-requirements.py")
    for dev in ("pytest", "ruff", "hypothesis", "wandb"):
        assert dev not in image, f"{dev} is a dev tool: not in the image"


def test_every_env_example_setting_is_used_by_the_compose_files() -> None:
    import re

    repo = Path(__file__).resolve().parent.parent
    example = (repo / ".env.example").read_text()
    names = re.findall(r"^(?:# )?((?:ZK0|GRAFANA|HF)_[A-Z0-9_]+)=", example, re.M)
    compose = "".join(p.read_text() for p in repo.glob("docker-compose*.yml"))
    unused = [n for n in names if "${" + n not in compose]
    assert names and unused == [], unused


def test_no_env_file_enters_the_image(tmp_path) -> None:
    """.dockerignore keeps every .env (secrets, a lab's paths) out of the build context, at any
    depth, and the .env.example files in. Docker's own matcher (the SDK's copy of it)."""
    from docker.utils.build import exclude_paths

    repo = Path(__file__).resolve().parent.parent
    patterns = [line.strip() for line in (repo / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = [".env", ".env.local", ".env.example", "deploy/lab/.env", "deploy/lab/.env.example",
             "tests/compose/.env.prod", "Dockerfile"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    kept = {p for p in exclude_paths(str(tmp_path), patterns) if p in files}
    assert kept == {".env.example", "deploy/lab/.env.example", "Dockerfile"}, kept
