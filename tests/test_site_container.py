"""The site operator's container: ``zk0 site-container`` and ``deploy/lab/docker-compose.yml``.

Without an engine: the checks before anything starts (each refusal names its path or value)
and the container spec built from the settings (mounts, key copy, user, GPU request, restart
policy, the launcher's env), asserted on the spec object. With ``docker compose``: the compose
file renders for every override and describes the same container as the spec. With a real
engine and the real zk0 image (``@pytest.mark.e2e``): a broken dataset is refused before any
site container exists, and a good one joins a real TLS SuperLink through its entry proxy (the
container on the host network, everything on 127.0.0.1), shows healthy, logs, and stops clean.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from docker_tools import clean_env, compose_cmd, remove_labelled, require_compose

from certs import ensure_federation_certs, make_site_key
from deploy.cli import build_parser
from deploy.cli import main as zk0
from deploy.containers import site_container as sc
from deploy.containers import site_container_spec as spec
from deploy.lab.launcher import SiteConfigError, SiteSettings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "deploy" / "lab" / "docker-compose.yml"
CPU_OVERRIDE = REPO / "deploy" / "lab" / "docker-compose.cpu.yml"


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """What the coordinator hands a lab (CA, coordinator.pub) and the lab's own key."""
    out = tmp_path_factory.mktemp("federation")
    certs = ensure_federation_certs(out / "certs", ["127.0.0.1", "localhost"], [])
    key, pub = make_site_key(out / "keys", "lab-a")
    return certs, key, pub


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """The host-side checks look only at the folder and meta/info.json (the full check runs in
    the container): a folder with an info.json is enough here."""
    root = tmp_path / "lab-a-data"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"fps": 30}))
    root.chmod(0o755)
    return root


def _settings(federation, dataset: Path, **over) -> spec.SiteContainerSettings:
    certs, key, _ = federation
    values = {"superlink": "127.0.0.1:8443", "site_name": "lab-a", "ca_file": certs.ca_cert,
              "key_file": key, "dataset_dir": dataset, "image": "zk0:test", **over}
    return spec.SiteContainerSettings(**values)


def _refused(settings: spec.SiteContainerSettings) -> str:
    with pytest.raises(SiteConfigError) as err:
        spec.check_settings(settings)
    return str(err.value)


# -- checks before anything starts -------------------------------------------------------------


def test_good_settings_give_the_launchers_settings_in_container_paths(federation, dataset):
    launcher = spec.check_settings(_settings(federation, dataset))
    assert isinstance(launcher, SiteSettings)
    assert str(launcher.site_key) == spec.KEY_FILE
    assert str(launcher.ca_cert) == spec.CA_FILE
    assert launcher.dataset_root == spec.DATASET_DIR
    assert launcher.node_config().site_name == "lab-a"


def test_each_refusal_names_the_path_and_what_was_expected(federation, dataset, tmp_path):
    missing = tmp_path / "nowhere"
    text = _refused(_settings(federation, missing))
    assert f"--dataset-dir / ZK0_DATASET_DIR {missing}: folder not found" in text

    (tmp_path / "empty").mkdir()
    assert "no meta/info.json" in _refused(_settings(federation, tmp_path / "empty"))

    text = _refused(_settings(federation, dataset, ca_file=tmp_path / "ca.crt"))
    assert f"--ca-file / ZK0_CA_FILE {tmp_path / 'ca.crt'}: file not found" in text

    text = _refused(_settings(federation, dataset, key_file=tmp_path / "lab-a.key"))
    assert f"ZK0_KEY_FILE {tmp_path / 'lab-a.key'}: file not found" in text

    text = _refused(_settings(federation, dataset, superlink="https://link.example:8443"))
    assert "--superlink / ZK0_SUPERLINK" in text and "without scheme" in text

    text = _refused(_settings(federation, dataset, coordinator_pub_file=tmp_path / "c.pub"))
    assert "ZK0_COORDINATOR_PUB_FILE" in text and str(tmp_path / "c.pub") in text

    text = _refused(_settings(federation, dataset, expect=str(tmp_path / "expect.json")))
    assert "--expect / ZK0_EXPECT" in text and "file not found" in text

    # the launcher's own rule for site names, before any container
    assert "'site-name'" in _refused(_settings(federation, dataset, site_name="lab a"))


def test_all_problems_are_listed_at_once(federation, tmp_path):
    text = _refused(_settings(federation, tmp_path / "nowhere", ca_file=tmp_path / "no.crt",
                              superlink="nohost"))
    assert len(text.splitlines()) == 4, text  # coordinator.pub is looked for next to the CA


def test_a_key_others_can_read_is_refused(federation, dataset, tmp_path):
    _, key, _ = federation
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    text = _refused(_settings(federation, dataset, key_file=loose))
    assert f"mode 0644 lets others read the key; expected 0600 (run: chmod 600 {loose})" in text
    loose.chmod(0o600)
    spec.check_settings(_settings(federation, dataset, key_file=loose))
    pub = federation[2]
    wrong = tmp_path / "pub-as-key"
    wrong.write_bytes(pub.read_bytes())
    wrong.chmod(0o600)
    assert "ZK0_KEY_FILE" in _refused(_settings(federation, dataset, key_file=wrong))


def test_a_dataset_the_container_user_cannot_read_is_refused(federation, dataset):
    dataset.chmod(0o700)  # owned by whoever runs the tests, not uid 49999
    text = _refused(_settings(federation, dataset))
    assert f"{dataset} (mode 0700) is not readable by the container user uid 49999" in text
    assert f"chmod -R o+rX {dataset}" in text
    if os.geteuid() == 0:  # group 49999 may read it: fine
        dataset.chmod(0o750)
        os.chown(dataset, -1, spec.CONTAINER_GID)
        spec.check_settings(_settings(federation, dataset))


def test_launcher_settings_passed_with_set_are_checked_by_name(federation, dataset):
    text = _refused(_settings(federation, dataset, launcher={"site_key": "/etc/x"}))
    assert "--set site_key: set by zk0 site-container itself" in text
    text = _refused(_settings(federation, dataset, launcher={"torch_thread": "2"}))
    assert "--set torch_thread: not a zk0 supernode setting" in text
    assert "torch_threads" in text
    text = _refused(_settings(federation, dataset, launcher={"torch_threads": "two"}))
    assert "torch_threads" in text
    launcher = spec.check_settings(_settings(federation, dataset,
                                             launcher={"torch_threads": "2", "worker": "false"}))
    env = spec.launcher_env(launcher)
    assert env["ZK0_TORCH_THREADS"] == "2" and env["ZK0_WORKER"] == "false"


def test_this_boxs_zk0_variables_do_not_leak_into_the_container(federation, dataset,
                                                                  monkeypatch):
    monkeypatch.setenv("ZK0_TORCH_THREADS", "7")
    monkeypatch.setenv("ZK0_WORK_DIR", "/home/op/.zk0")
    env = spec.launcher_env(spec.check_settings(_settings(federation, dataset)))
    assert "ZK0_TORCH_THREADS" not in env
    assert env["ZK0_WORK_DIR"] == spec.WORK_DIR


# -- the container spec ------------------------------------------------------------------------


def test_site_spec_mounts_read_only_copies_the_key_and_runs_as_the_image_user(
    federation, dataset
):
    certs, key, _ = federation
    settings = _settings(federation, dataset)
    site = spec.site_spec(settings, spec.check_settings(settings), gpu=False)
    mounts = {m.target: m for m in site.mounts}
    assert set(mounts) == {spec.DATASET_DIR, spec.CA_FILE, spec.COORDINATOR_PUB_FILE}
    assert all(m.read_only for m in site.mounts)
    assert mounts[spec.DATASET_DIR].source == dataset.resolve()
    assert mounts[spec.COORDINATOR_PUB_FILE].source == certs.coordinator_pub.resolve()
    assert all(m.source != key.resolve() for m in site.mounts), "the key is never mounted"
    [item] = site.files
    assert (item.source, item.target, item.uid, item.gid, item.mode, item.dir_mode) == (
        key.resolve(), spec.KEY_FILE, 49999, 49999, 0o600, 0o700)
    kwargs = site.create_kwargs()
    assert kwargs["user"] == "49999:49999"
    assert kwargs["entrypoint"] == ["zk0"] and kwargs["command"] == ["supernode"]
    assert kwargs["restart_policy"] == {"Name": "unless-stopped"}
    assert "device_requests" not in kwargs
    assert kwargs["ports"] == {"9401/tcp": ("127.0.0.1", 9401)}
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["init"] is True
    assert [(m["Target"], m["Source"], m["ReadOnly"], m["Type"]) for m in kwargs["mounts"]] == [
        (m.target, str(m.source), True, "bind") for m in site.mounts]
    assert kwargs["name"] == "zk0-site-lab-a" and kwargs["labels"]["org.zk0.site"] == "lab-a"


def test_gpu_device_request_and_restart_policies(federation, dataset):
    settings = _settings(federation, dataset, restart="on-failure")
    kwargs = spec.site_spec(settings, spec.check_settings(settings), gpu=True).create_kwargs()
    [request] = kwargs["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert kwargs["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 0}
    assert [spec.decide_gpu(m, n) for m in ("auto", "all", "none") for n in (0, 2)] == [
        False, True, True, True, False, False]


def test_the_env_is_the_launchers_own_settings(federation, dataset):
    settings = _settings(federation, dataset, runtime_port=9194, metrics_port=9501,
                         network="host", eval_episodes=3)
    site = spec.site_spec(settings, spec.check_settings(settings), gpu=False)
    env = dict(site.environment)
    extra = {"ZK0_CACHE", "ZK0_HEALTH_URL", "ZK0_HEALTH_CA"}
    for name in set(env) - extra - {"HF_HUB_OFFLINE"}:
        assert name.startswith("ZK0_") and name[4:].lower() in SiteSettings.model_fields, name
    # the launcher in the container reads back exactly these values
    back = SiteSettings(_env_file=None, **{k[4:].lower(): v for k, v in env.items()
                                           if k.startswith("ZK0_") and k not in extra})
    assert back.metrics_listen == "127.0.0.1:9501"  # host network: listen where published
    assert back.runtime_port == 9194 and back.eval_episodes == 3
    assert env["ZK0_HEALTH_URL"] == "https://127.0.0.1:9194/health"
    assert env["ZK0_HEALTH_CA"] == f"{spec.WORK_DIR}/runtime-tls/ca.crt"
    kwargs = site.create_kwargs()
    assert kwargs["network_mode"] == "host" and "ports" not in kwargs
    off = _settings(federation, dataset, metrics_host="off")
    assert spec.launcher_env(spec.check_settings(off))["ZK0_METRICS_LISTEN"] == "off"


def test_the_check_container_has_the_dataset_and_nothing_else(federation, dataset, tmp_path):
    expect = tmp_path / "expect.json"
    expect.write_text("{}")
    settings = _settings(federation, dataset, expect=str(expect), eval_episodes=3)
    check = spec.check_spec(settings)
    kwargs = check.create_kwargs()
    assert kwargs["command"] == ["check-dataset", spec.DATASET_DIR, "--expect",
                                 spec.EXPECT_FILE, "--eval-episodes", "3"]
    assert kwargs["network_mode"] == "none" and kwargs["user"] == "49999:49999"
    assert {(m.target, m.read_only) for m in check.mounts} == {
        (spec.DATASET_DIR, True), (spec.EXPECT_FILE, True)}
    assert check.files == () and kwargs["restart_policy"] == {"Name": ""}


def test_the_key_archive_is_0600_in_a_0700_folder_owned_by_the_container_user(federation):
    _, key, _ = federation
    path, data = sc.key_archive(spec.ContainerFile(key, spec.KEY_FILE))
    assert path == spec.SITE_DIR
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"keys", "keys/site.key"}
        assert members["keys"].isdir() and members["keys"].mode == 0o700
        assert members["keys/site.key"].mode == 0o600
        assert {(m.uid, m.gid) for m in members.values()} == {(49999, 49999)}
        assert tar.extractfile("keys/site.key").read() == key.read_bytes()


def test_cli_flags_win_over_env_over_env_file(federation, dataset, tmp_path, monkeypatch):
    certs, key, _ = federation
    env_file = tmp_path / ".env"
    env_file.write_text(f"ZK0_SUPERLINK=from-file:1\nZK0_SITE_NAME=lab-a\nZK0_CA_FILE="
                        f"{certs.ca_cert}\nZK0_KEY_FILE={key}\nZK0_DATASET_DIR={dataset}\n"
                        "ZK0_GPUS=none\nZK0_IMAGE=from-file:1\n")
    monkeypatch.setenv("ZK0_IMAGE", "from-env:1")
    args = build_parser().parse_args(
        ["site-container", "start", "--env-file", str(env_file), "--superlink", "flag:2",
         "--set", "torch_threads=2"])
    settings = sc.settings_from_args(args)
    assert (settings.superlink, settings.image, settings.gpus) == ("flag:2", "from-env:1", "none")
    assert settings.launcher == {"torch_threads": "2"}


def test_cli_refuses_before_touching_the_engine(federation, tmp_path, monkeypatch, capsys):
    certs, key, _ = federation
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # never dialled
    code = zk0(["site-container", "start", "--superlink", "127.0.0.1:8443", "--site-name",
                "lab-a", "--ca-file", str(certs.ca_cert), "--key-file", str(key),
                "--dataset-dir", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == sc.EXIT_REFUSED
    assert "refusing" in err and f"{tmp_path / 'missing'}: folder not found" in err
    assert "Docker engine" not in err
    code = zk0(["site-container", "start", "--site-name", "lab-a"])
    assert code == sc.EXIT_REFUSED and "ZK0_SUPERLINK" in capsys.readouterr().err


def test_an_unreachable_engine_is_named(monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert zk0(["site-container", "status", "--site-name", "lab-a"]) == sc.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "Docker engine unreachable at unix:///nonexistent/docker.sock" in err


# -- the compose file --------------------------------------------------------------------------


def _compose_config(env_file: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(compose_cmd("zk0sitecfg", env_file, files, "config", "--format", "json"),
                          capture_output=True, text=True, env=clean_env(), timeout=120,
                          check=False)


def test_every_default_image_tag_is_the_same() -> None:
    """deploy/lab, the coordinator's stack and the .env.example files name one tag."""
    tags = {
        "site_container_spec.DEFAULT_IMAGE": spec.DEFAULT_IMAGE,
        **{str(f.relative_to(REPO)): re.search(r"\$\{ZK0_IMAGE:-([^}]+)\}", f.read_text())[1]
           for f in (COMPOSE, REPO / "docker-compose.yml")},
        **{str(f.relative_to(REPO)): re.search(r"^ZK0_IMAGE=(\S+)$", f.read_text(), re.M)[1]
           for f in (REPO / "deploy" / "lab" / ".env.example", REPO / ".env.example")},
    }
    assert set(tags.values()) == {spec.DEFAULT_IMAGE}, tags


@pytest.mark.docker
def test_compose_file_renders_and_describes_the_same_container(federation, dataset, tmp_path):
    require_compose()
    certs, key, _ = federation
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / "deploy" / "lab" / ".env.example").read_text())
    with env_file.open("a") as f:
        f.write(f"ZK0_CA_FILE={certs.ca_cert}\nZK0_COORDINATOR_PUB_FILE={certs.coordinator_pub}"
                f"\nZK0_KEY_FILE={key}\nZK0_DATASET_DIR={dataset}\nZK0_IMAGE=zk0:test\n"
                "ZK0_SUPERLINK=127.0.0.1:8443\n")
    done = _compose_config(env_file, COMPOSE)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    site = config["services"]["site"]
    settings = _settings(federation, dataset, gpus="all")
    sdk = spec.site_spec(settings, spec.check_settings(settings), gpu=True)
    assert site["environment"] == dict(sdk.environment)
    assert site["user"] == sdk.user and site["entrypoint"] == list(sdk.entrypoint)
    assert site["command"] == list(sdk.command) and site["restart"] == sdk.restart
    binds = {(v["source"], v["target"], v.get("read_only", False)) for v in site["volumes"]
             if v["type"] == "bind"}
    assert binds == {(str(m.source), m.target, True) for m in sdk.mounts}
    assert {v["target"] for v in site["volumes"] if v["type"] == "volume"} == {spec.SITE_DIR}
    assert site["depends_on"]["check-dataset"]["condition"] == "service_completed_successfully"
    assert site["depends_on"]["site-key"]["condition"] == "service_completed_successfully"
    assert site["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert site["ports"][0]["host_ip"] == "127.0.0.1" and site["ports"][0]["target"] == 9401
    assert "healthcheck" in site
    check = config["services"]["check-dataset"]
    assert check["command"] == spec.check_spec(settings).create_kwargs()["command"]
    assert check["network_mode"] == "none" and check["user"] == "49999:49999"
    key_init = config["services"]["site-key"]
    assert "/app/site/keys/site.key" in key_init["command"][0]
    assert "0600" in key_init["command"][0] and config["secrets"]["site_key"]["file"] == str(key)
    # without a GPU
    done = _compose_config(env_file, COMPOSE, CPU_OVERRIDE)
    assert done.returncode == 0, done.stderr
    assert "deploy" not in json.loads(done.stdout)["services"]["site"]
    # a required value missing: refused with what to set
    lines = [ln for ln in env_file.read_text().splitlines()
             if not ln.startswith("ZK0_DATASET_DIR=")]
    env_file.write_text("\n".join(lines) + "\n")
    done = _compose_config(env_file, COMPOSE)
    assert done.returncode != 0
    assert "set ZK0_DATASET_DIR to the lab's LeRobotDataset folder" in done.stderr


# -- the real thing ----------------------------------------------------------------------------

SITE = f"lab-{os.getpid()}"


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory, nginx: str):
    """A real TLS SuperLink behind its entry proxy on 127.0.0.1, no sites yet; this site's key
    registered under its name."""
    from deploy.cluster.local_cluster import LocalCluster

    work = tmp_path_factory.mktemp("site-container-link")
    cluster = LocalCluster(REPO, [], work, proxy=True, echo_run=False, workers=False,
                           metrics=False, startup_timeout=120)
    try:
        cluster.start()
        key, pub = make_site_key(work / "lab", SITE)
        node_id = cluster.register(SITE, pub)
        assert node_id is not None
        yield cluster, key, node_id
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def lab_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A good and a broken (7-D state) demo dataset, world-readable like a lab's share."""
    from broken_datasets import copy_site, widen_state

    from demo_data import DemoSpec, make_demo_datasets

    root = tmp_path_factory.mktemp("lab-data")
    make_demo_datasets(root, DemoSpec(num_sites=1, episodes_per_site=5, frames_per_episode=20))
    good = root / "site-0"
    broken = copy_site(good, root / "broken")
    widen_state(broken)
    for path in (good, broken):
        subprocess.run(["chmod", "-R", "o+rX", str(path)], check=True)
    return good, broken


def _start_args(cluster, key: Path, dataset: Path, image: str, ports: tuple[int, int]) -> list[str]:
    return [
        "site-container", "start", "--superlink", cluster.site_address, "--site-name", SITE,
        "--ca-file", str(cluster.certs.ca_cert), "--key-file", str(key),
        "--dataset-dir", str(dataset), "--image", image, "--gpus", "none",
        "--network", "host", "--runtime-port", str(ports[0]), "--metrics-port", str(ports[1]),
        "--set", "torch_threads=1", "--stop-timeout", "20", "--wait", "420",
    ]


@pytest.mark.e2e
@pytest.mark.docker
def test_site_container_refuses_a_broken_dataset_then_joins_with_a_good_one(
    zk0_image: str, link, lab_data, capsys
) -> None:
    import docker
    from docker.errors import NotFound

    from deploy.cluster.local_cluster import free_port
    from deploy.flower import flwr_cli

    cluster, key, node_id = link
    good, broken = lab_data
    client = docker.from_env()
    ports = (free_port(), free_port())
    t0 = time.monotonic()
    try:
        # a broken dataset: refused by the check container, the site container never created
        code = zk0(_start_args(cluster, key, broken, zk0_image, ports))
        out, err = capsys.readouterr()
        print(out, err, file=sys.stderr)
        assert code == sc.EXIT_REFUSED
        assert f"dataset {broken} failed `zk0 check-dataset" in err
        assert "observation.state" in err  # the check's own finding, naming the key
        assert client.containers.list(all=True, filters={"label": f"org.zk0.site={SITE}"}) == []
        t_refused = time.monotonic() - t0

        # a good one: checked, started, healthy, joined
        code = zk0(_start_args(cluster, key, good, zk0_image, ports))
        out, err = capsys.readouterr()
        print(out, err, file=sys.stderr)
        assert code == 0, out + err
        assert f"connected as node {node_id}" in out
        t_joined = time.monotonic() - t0
        nodes = flwr_cli.list_supernodes(cluster.flwr_home, cluster.connection)
        assert {"node-id": str(node_id), "status": "online"}.items() <= next(
            n for n in nodes if n["node-id"] == str(node_id)).items(), nodes

        # one short round with the containerized site as the federation's only site
        result = cluster.run({"policy": "smolvla-tiny", "num-server-rounds": 1,
                              "local-steps": 2, "batch-size": 4, "eval-samples": 8,
                              "min-sites": 1, "round-timeout": 400.0,
                              "output-dir": str(cluster.work_dir / "runs")}, timeout=500)
        assert result.ok, f"status {result.status}\n{result.output[-3000:]}"
        t_round = time.monotonic() - t0

        # the site's /metrics, where --metrics-host/--metrics-port put it
        import httpx

        metrics = httpx.get(f"http://127.0.0.1:{ports[1]}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert f'zk0_local_processes{{role="supernode",site="{SITE}"}}' in metrics.text

        container = client.containers.get(f"zk0-site-{SITE}")
        result = container.exec_run(["stat", "-c", "%a %u %g", spec.KEY_FILE, spec.KEY_DIR])
        assert result.output.decode().split("\n")[:2] == ["600 49999 49999", "700 49999 49999"]
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert not container.attrs["HostConfig"]["DeviceRequests"]
        mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        assert mounts == {spec.DATASET_DIR: False, spec.CA_FILE: False,
                          spec.COORDINATOR_PUB_FILE: False}

        assert zk0(["site-container", "status", "--site-name", SITE]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "health healthy" in out and "restarts 0" in out
        assert zk0(["site-container", "logs", "--site-name", SITE, "--tail", "all"]) == 0
        logs = capsys.readouterr().out
        assert f"site {SITE!r} connected as node {node_id}" in logs
        body = "".join(key.read_text().splitlines()[1:-1])
        assert body[:40] not in logs, "key material in the site's log"

        assert zk0(["site-container", "stop", "--site-name", SITE]) == 0
        out = capsys.readouterr().out
        assert "stopped (exit code 0)" in out and "removed" in out
        with pytest.raises(NotFound):
            client.containers.get(f"zk0-site-{SITE}")
        assert zk0(["site-container", "status", "--site-name", SITE]) == sc.EXIT_REFUSED
        assert f"no container zk0-site-{SITE} on this engine" in capsys.readouterr().err
        t_stopped = time.monotonic() - t0

        # a key the coordinator never registered: started, refused by the SuperLink, and
        # start says so with the launcher's explanation (restart "no": it stays exited)
        stranger, _ = make_site_key(cluster.work_dir / "stranger", SITE)
        args = _start_args(cluster, stranger, good, zk0_image, ports)
        assert zk0([*args, "--restart", "no", "--set", "worker=false"]) == sc.EXIT_NOT_READY
        out = capsys.readouterr().out
        assert "refused to activate this SuperNode" in out, out
        assert f"zk0-site-{SITE} is not healthy and joined" in out
        assert zk0(["site-container", "stop", "--site-name", SITE]) == 0
        assert "removed" in capsys.readouterr().out
        print(f"site container: refused in {t_refused:.0f} s, joined at {t_joined:.0f} s, "
              f"round done at {t_round:.0f} s, stopped at {t_stopped:.0f} s, unregistered key "
              f"refused at {time.monotonic() - t0:.0f} s",
              file=sys.stderr)
    finally:  # whatever happened above: nothing of this site stays on the engine
        remove_labelled(f"org.zk0.site={SITE}")


def test_the_parser_knows_every_action() -> None:
    parser = build_parser()
    for action in ("start", "status", "logs", "stop"):
        args = parser.parse_args(["site-container", action, "--site-name", "x"])
        assert isinstance(args, argparse.Namespace) and args.action == action


@pytest.mark.e2e
@pytest.mark.docker
def test_compose_site_refuses_a_broken_dataset_after_installing_the_key(
    zk0_image: str, federation, lab_data, tmp_path
) -> None:
    """The compose path's gates on a real engine: ``site-key`` puts the key on the site's volume
    as 0600/uid 49999, ``check-dataset`` fails on the broken dataset, and ``site`` is never
    started; everything (volume included) is removed after."""
    require_compose()
    certs, key, _ = federation
    _, broken = lab_data
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"ZK0_IMAGE={zk0_image}\nZK0_SUPERLINK=127.0.0.1:1\nZK0_SITE_NAME=lab-a\n"
        f"ZK0_CA_FILE={certs.ca_cert}\nZK0_COORDINATOR_PUB_FILE={certs.coordinator_pub}\n"
        f"ZK0_KEY_FILE={key}\nZK0_DATASET_DIR={broken}\nZK0_METRICS_PORT=0\n")
    project = f"zk0site{os.getpid()}"

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(compose_cmd(project, env_file, (COMPOSE, CPU_OVERRIDE), *args),
                              capture_output=True, text=True, timeout=timeout, env=clean_env(),
                              check=False)

    try:
        up = compose("up", "-d")
        assert up.returncode != 0, up.stdout + up.stderr
        assert 'service "check-dataset" didn\'t complete successfully' in up.stderr, up.stderr
        logs = compose("logs", "check-dataset").stdout
        assert "observation.state" in logs and "FAILED: /app/data/site" in logs, logs
        states = dict(line.split() for line in compose(
            "ps", "-a", "--format", "{{.Service}} {{.State}}").stdout.splitlines())
        # compose creates the site's container but never starts it
        assert states == {"site-key": "exited", "check-dataset": "exited", "site": "created"}
        stat = compose("run", "--rm", "--no-deps", "--entrypoint", "stat", "site",
                       "-c", "%a %u %g", spec.KEY_FILE, spec.KEY_DIR)
        assert stat.stdout.split("\n")[:2] == ["600 49999 49999", "700 49999 49999"], (
            stat.stdout + stat.stderr)
    finally:
        down = compose("down", "-v", "--remove-orphans")
        assert down.returncode == 0, down.stderr
