"""``docker compose``: the stack's files, and the whole stack run for real on a Docker Engine.

Fast (no engine needed, only the docker CLI with Compose v2): ``docker compose config`` passes
for every combination of files, and the resolved stack has the layout the README promises (only
the entry proxy publishes a federation port, the sites sit on the labs' network only, each with
its own key, data and state volumes, healthchecks and restart policies, Grafana's password
required, a GPU per site in the GPU override, each site's key volume mounted by that site's own
containers only).

End to end (``e2e``): runs zk0's image from the session fixture ``zk0_image`` (built once per
session on debian:trixie-slim, shared with the site container's tests), builds only the
stand-ins for nginx and Prometheus (Debian packages; no registry is reachable), brings the
stack up with the test
override (``network_mode: host``, free ports on 127.0.0.1), runs 3 rounds of the offline tiny
SmolVLA on demo data with 4 sites, stops one site container after round 2 and checks round 3
completes with the other three; then reads the run report and a checkpoint from the ``runs``
volume, checks Prometheus scraped every site and that the entry refuses the Control API, that
each site's key was made in the site's own volume and that no coordinator-side volume (the
sites' bundles included) holds a site's private key; and always tears everything down with its
volumes and the stand-ins' images.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from docker_tools import (
    BASE_IMAGE,
    REPO,
    clean_env,
    compose_cmd,
    remove_image,
    require_compose,
    require_image,
    write_env_file,
)
from key_files import site_private_keys
from prometheus_tools import query

from deploy.cluster.local_cluster import free_port

pytestmark = pytest.mark.docker

BASE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
TEST_OVERRIDE = REPO / "tests" / "compose" / "docker-compose.test.yml"
# Every combination the repository documents or uses: the default, the GPU override, the
# test override (with and without the GPU one).
COMBINATIONS: dict[str, tuple[Path, ...]] = {
    "default": (BASE,),
    "gpu": (BASE, GPU),
    "test": (BASE, TEST_OVERRIDE),
    "gpu+test": (BASE, GPU, TEST_OVERRIDE),
}
SITES = [f"site-{i}" for i in range(4)]
STOPPED = "site-3"
ROUNDS = 3
RUN_CONFIG = (
    f"policy=smolvla-tiny num-server-rounds={ROUNDS} local-steps=3 batch-size=4 "
    "eval-samples=8 min-sites=3 round-timeout=300 join-timeout=300 trajectory-every=0"
)
LONG_LIVED = ["superlink", "coordinator-metrics", "superexec", "entry-proxy", *SITES,
              "prometheus", "grafana"]
# Built by the test from deploy/containers/docker/standins/ (zk0's own image is the session's
# zk0_image).
STAND_INS = ["entry-proxy", "prometheus"]
# Grafana has no Debian package: the e2e stack runs everything else.
KEY_JOBS = [f"{site}-key" for site in SITES]
E2E_SERVICES = ["init", *KEY_JOBS, "demo-data", "superlink", "coordinator-metrics", "superexec",
                "register", "entry-proxy", *SITES, "run", "prometheus"]
# Where the coordinator's containers mount their volumes (the sites' bundles included): copied
# out after the run and scanned for site private keys.
COORDINATOR_SIDE = {"init": ["/app/certs", "/app/proxy", "/app/config",
                             *(f"/app/sites/{site}" for site in SITES)],
                    "superlink": ["/app/state"], "superexec": ["/app/metrics", "/app/runs"]}
TIMEOUT_S = 1500  # the whole e2e stack, the stand-ins' builds included


def _config(files: tuple[Path, ...], env_file: Path, *extra: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(compose_cmd("zk0cfg", env_file, files, "config", *extra),
                         capture_output=True, text=True, timeout=120, env=clean_env(),
                         check=False)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture()
def env_file(tmp_path) -> Path:
    return write_env_file(tmp_path / "env", {"GRAFANA_ADMIN_PASSWORD": "not-a-real-one"})


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_compose_config_passes(combination, env_file) -> None:
    require_compose()
    _config(COMBINATIONS[combination], env_file, "--quiet")


def test_grafana_password_has_no_default(tmp_path) -> None:
    require_compose()
    empty = write_env_file(tmp_path / "empty", {})
    out = _config((BASE,), empty, "--quiet", check=False)
    assert out.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in out.stderr, out.stderr


def test_the_resolved_stack_has_the_promised_layout(env_file) -> None:
    require_compose()
    stack = json.loads(_config((BASE,), env_file, "--format", "json").stdout)
    services = stack["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"entry-proxy", "prometheus", "grafana"}, published
    for name in ("prometheus", "grafana"):  # monitoring on the host's loopback only
        assert all(p["host_ip"] == "127.0.0.1" for p in services[name]["ports"]), name
    for name in LONG_LIVED:
        s = services[name]
        assert s.get("restart") in ("unless-stopped", "on-failure:5"), name
        # zk0's image carries its HEALTHCHECK (ZK0_HEALTH_URL); the others get one here
        assert s.get("healthcheck", {}).get("test") or s["environment"].get("ZK0_HEALTH_URL") \
            or name == "superexec", name
        assert not s.get("healthcheck", {}).get("disable"), name
    for name in ("init", *KEY_JOBS, "demo-data", "register", "run"):
        assert services[name]["restart"] == "no", name
    assert set(services["superlink"]["networks"]) == {"core"}
    for site in SITES:
        s = services[site]
        assert set(s["networks"]) == {"fleet"}, site  # the entry is their only way in
        assert s["environment"]["ZK0_SUPERLINK"] == "entry-proxy:8443"
        assert s["environment"]["ZK0_SITE_KEY"] == f"/app/keys/{site}.key"
        assert s["environment"]["ZK0_CA_CERT"] == "/app/federation/ca.crt"
        sources = {v["target"]: (v["source"], v.get("read_only", False)) for v in s["volumes"]}
        assert sources == {"/app/keys": (f"{site}-keys", True),
                           "/app/federation": (f"{site}-public", True),
                           "/app/data": (f"{site}-data", True),
                           "/app/site": (f"{site}-state", False)}, sources
        # the site's key is born in its volume, by a job of its own without network or powers
        job = services[f"{site}-key"]
        assert job["network_mode"] == "none" and job["cap_drop"] == ["ALL"], job
        assert job["user"] == "49999:49999" and job["environment"]["ZK0_SITE_NAME"] == site
        assert {v["source"]: v["target"] for v in job["volumes"]} == {
            f"{site}-keys": "/app/keys", f"{site}-public": f"/app/sites/{site}"}
        # and no other container ever mounts the site's key volume
        holders = {name for name, other in services.items()
                   for v in other.get("volumes", []) if v["source"] == f"{site}-keys"}
        assert holders == {site, f"{site}-key"}, holders
        conditions = {k: v["condition"] for k, v in s["depends_on"].items()}
        assert conditions == {"entry-proxy": "service_healthy",
                              "register": "service_completed_successfully",
                              "demo-data": "service_completed_successfully"}
        assert "deploy" not in s  # no GPU by default
    register = {v["source"]: v.get("read_only", False) for v in services["register"]["volumes"]}
    assert register == {"certs": True, **{f"{site}-public": True for site in SITES}}, register
    assert {f"{site}-key" for site in SITES} <= set(services["register"]["depends_on"])
    assert services["superlink"]["volumes"][1]["source"] == "superlink-state"
    gpu = json.loads(_config((BASE, GPU), env_file, "--format", "json").stdout)["services"]
    for site in SITES:
        [device] = gpu[site]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
        assert gpu[site]["environment"]["ZK0_DEVICE"] == "cuda"
    test = json.loads(_config((BASE, TEST_OVERRIDE), env_file, "--format", "json").stdout)
    for name, s in test["services"].items():  # on 127.0.0.1, or no network at all
        assert s.get("network_mode") == ("none" if name in KEY_JOBS else "host"), name
        assert not s.get("ports"), name


# -- end to end ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """One compose project on this engine; everything it makes is removed in :meth:`down`."""

    project: str
    env_file: Path
    images: list[str]
    ports: dict[str, int]
    files: tuple[Path, ...] = (BASE, TEST_OVERRIDE)
    timings: dict[str, float] = field(default_factory=dict)

    def cmd(self, *args: str) -> list[str]:
        return compose_cmd(self.project, self.env_file, self.files, *args)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout,
                             env=clean_env(), check=False)
        assert out.returncode == 0, f"docker compose {' '.join(args)}:\n{out.stderr[-4000:]}"
        return out

    def container(self, service: str) -> str:
        out = self.compose("ps", "-a", "-q", service, timeout=60).stdout.split()
        assert len(out) == 1, f"{service}: containers {out}"
        return out[0]

    def logs_tail(self, lines: int = 60, *services: str) -> str:
        out = subprocess.run(self.cmd("logs", "--no-color", "--tail", str(lines), *services),
                             capture_output=True, text=True, timeout=120, env=clean_env(),
                             check=False)
        return out.stdout[-20000:] + out.stderr[-2000:]

    def down(self) -> None:
        subprocess.run(self.cmd("down", "-v", "--remove-orphans", "--timeout", "10"),
                       capture_output=True, text=True, timeout=300, env=clean_env(),
                       check=False)
        for image in self.images:  # only the stand-ins' tags: zk0_image is the session's
            remove_image(image)


def _follow_run(stack: Stack, deadline: float) -> tuple[list[str], float | None]:
    """Stream the `run` service's output; stop site-3 once round 2 is reported. Returns the
    lines and when the stop was issued."""
    lines: list[str] = []
    stopped: list[float] = []

    def stop_site() -> None:
        stopped.append(time.monotonic())
        stack.compose("stop", "--timeout", "20", STOPPED, timeout=120)

    proc = subprocess.Popen(stack.cmd("logs", "-f", "--no-color", "--no-log-prefix", "run"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=clean_env())
    timer = threading.Timer(max(1.0, deadline - time.monotonic()), proc.kill)
    timer.start()
    stopper: threading.Thread | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"[compose run] {line}", end="", file=sys.stderr, flush=True)
            if stopper is None and f"===== round 2/{ROUNDS}" in line:
                stopper = threading.Thread(target=stop_site, daemon=True)
                stopper.start()
        proc.wait(30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if stopper is not None:
        stopper.join(150)
    return lines, (stopped[0] if stopped else None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, zk0_image: str) -> Iterator[Stack]:
    require_compose()
    require_image(BASE_IMAGE)  # the stand-ins' base
    work = tmp_path_factory.mktemp("compose")
    project = f"zk0test{uuid.uuid4().hex[:8]}"
    names = ["superlink", "entry", "coordinator", "prometheus", "grafana"]
    ports = {name: free_port() for name in names}
    for site in SITES:
        ports[f"{site}-runtime"] = free_port()
        ports[f"{site}-metrics"] = free_port()
    images = [f"zk0-test-nginx:{project}", f"zk0-test-prometheus:{project}"]
    values: dict[str, object] = {
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        "ZK0_IMAGE": zk0_image, "ZK0_NGINX_IMAGE": images[0],
        "ZK0_PROMETHEUS_IMAGE": images[1], "ZK0_BASE_IMAGE": BASE_IMAGE,
        "HF_HUB_OFFLINE": 1, "ZK0_LISTEN_HOST": "127.0.0.1", "ZK0_ENTRY_BIND": "127.0.0.1",
        "ZK0_SUPERLINK_HOST": "127.0.0.1", "ZK0_ENTRY_HOST": "127.0.0.1",
        "ZK0_COORDINATOR_METRICS_HOST": "127.0.0.1", "ZK0_PROMETHEUS_HOST": "127.0.0.1",
        "ZK0_SUPERLINK_PORT": ports["superlink"], "ZK0_ENTRY_PORT": ports["entry"],
        "ZK0_COORDINATOR_METRICS_PORT": ports["coordinator"],
        "ZK0_PROMETHEUS_PORT": ports["prometheus"], "ZK0_GRAFANA_PORT": ports["grafana"],
        "ZK0_SCRAPE_INTERVAL": "2s", "ZK0_DEMO_EPISODES": 5, "ZK0_DEMO_FRAMES": 30,
        "ZK0_EVAL_EPISODES": 1, "ZK0_TORCH_THREADS": 1, "ZK0_DEVICE": "cpu",
        "ZK0_RUN_CONFIG": f'"{RUN_CONFIG}"', "ZK0_RUN_TIMEOUT": 900,
    }
    for i, site in enumerate(SITES):
        values[f"ZK0_SITE_{i}_HOST"] = "127.0.0.1"
        values[f"ZK0_SITE_{i}_RUNTIME_PORT"] = ports[f"{site}-runtime"]
        values[f"ZK0_SITE_{i}_METRICS_PORT"] = ports[f"{site}-metrics"]
    s = Stack(project, write_env_file(work / "env", values), images, ports)
    deadline = time.monotonic() + TIMEOUT_S
    t0 = time.monotonic()
    try:
        s.compose("build", *STAND_INS, timeout=TIMEOUT_S)  # never zk0's: the `init` service
        s.timings["build"] = time.monotonic() - t0
        t1 = time.monotonic()
        s.compose("up", "-d", "--no-build", *E2E_SERVICES,
                  timeout=max(60.0, deadline - time.monotonic()))
        s.timings["up"] = time.monotonic() - t1
        t2 = time.monotonic()
        s.lines, s.stopped_at = _follow_run(s, deadline)  # type: ignore[attr-defined]
        s.timings["run"] = time.monotonic() - t2
        run = s.container("run")
        inspect = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", run],
                                 capture_output=True, text=True, timeout=60, check=True)
        s.run_exit = int(inspect.stdout.strip())  # type: ignore[attr-defined]
        if s.run_exit != 0:  # the coordinator's side says why (the run's stream may not)
            print(f"coordinator logs (tail):\n{s.logs_tail(200, 'superexec', 'superlink')}",
                  file=sys.stderr)
        out = work / "out"
        out.mkdir()
        for src, dst in (("/app/runs", "runs"), ("/app/certs/ca.crt", "ca.crt")):
            subprocess.run(["docker", "cp", f"{run}:{src}", str(out / dst)], check=True,
                           capture_output=True, timeout=300)
        copies = {"coordinator": [(s.container(service), path)
                                  for service, paths in COORDINATOR_SIDE.items()
                                  for path in paths],
                  "sites": [(s.container(job), "/app/keys") for job in KEY_JOBS]}
        for side, sources in copies.items():
            for i, (container, path) in enumerate(sources):
                (out / side / str(i)).mkdir(parents=True)
                subprocess.run(["docker", "cp", f"{container}:{path}", str(out / side / str(i))],
                               check=True, capture_output=True, timeout=300)
        s.out = out  # type: ignore[attr-defined]
        yield s
    except BaseException:
        print(f"compose stack logs (tail):\n{s.logs_tail()}", file=sys.stderr)
        raise
    finally:
        t3 = time.monotonic()
        s.down()
        s.timings["down"] = time.monotonic() - t3
        s.timings["total"] = time.monotonic() - t0
        print(f"compose e2e timings (s): { {k: round(v) for k, v in s.timings.items()} }",
              file=sys.stderr)
        left = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                               f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert left.stdout.strip() == "", f"containers left: {left.stdout}"


def _run_dir(stack: Stack) -> Path:
    [run_dir] = sorted((stack.out / "runs").glob("run-*"))  # type: ignore[attr-defined]
    return run_dir


@pytest.mark.e2e
def test_the_federation_ran_and_went_on_without_the_stopped_site(stack) -> None:
    output = "\n".join(stack.lines)
    assert stack.run_exit == 0, output[-6000:]
    assert "ended 'finished:completed'" in output
    assert stack.stopped_at is not None, "round 2 was never reported"
    run_dir = _run_dir(stack)
    for r in (1, 2):  # all four sites trained in rounds 1 and 2
        entry = json.loads((run_dir / "rounds" / f"round_00{r}.json").read_text())
        assert set(entry["sites"]) == set(SITES) and entry["failures"] == [], entry
    last = json.loads((run_dir / "rounds" / f"round_00{ROUNDS}.json").read_text())
    assert last["aggregated"] is True, last
    assert set(last["sites"]) == set(SITES) - {STOPPED}, last
    assert {f["site"] for f in last["failures"]} <= {STOPPED}, last
    # the report the `run` service printed: every site's held-out MSE per round
    assert "held-out action MSE per site" in output
    for site in SITES:
        assert site in output.split("held-out action MSE per site")[-1]


@pytest.mark.e2e
def test_the_report_and_a_checkpoint_are_on_the_runs_volume(stack) -> None:
    from safetensors.numpy import load_file

    run_dir = _run_dir(stack)
    history = json.loads((run_dir / "eval_history.json").read_text())
    assert history, "empty eval history"
    model = run_dir / "checkpoints" / f"{ROUNDS:06d}" / "pretrained_model"
    config = json.loads((model / "config.json").read_text())
    assert config["type"] == "smolvla"
    tensors = load_file(model / "model.safetensors")
    assert tensors and all(np.isfinite(t).all() for t in tensors.values())


@pytest.mark.e2e
def test_prometheus_scraped_every_site_and_the_coordinator(stack) -> None:
    base = f"http://127.0.0.1:{stack.ports['prometheus']}"
    up = query(base, 'max_over_time(up{job="zk0-sites"}[1h])')
    assert {r["metric"]["site"]: float(r["value"][1]) for r in up} == dict.fromkeys(SITES, 1.0)
    trained = query(base, "count by (site) (max_over_time(zk0_local_eval_action_mse[1h]))")
    assert {r["metric"]["site"] for r in trained} == set(SITES), trained
    coordinator = query(base, 'max_over_time(up{job="zk0-coordinator"}[1h])')
    assert [float(r["value"][1]) for r in coordinator] == [1.0]


@pytest.mark.e2e
def test_the_entry_forwards_fleet_and_health_only(stack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.out / "ca.crt"))  # type: ignore[attr-defined]
    entry = f"https://127.0.0.1:{stack.ports['entry']}"
    with urllib.request.urlopen(f"{entry}/health", context=ctx, timeout=10) as response:
        assert response.status == 200
    request = urllib.request.Request(f"{entry}/v1/control/list-runs", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=ctx, timeout=10)
    assert refused.value.code == 403


@pytest.mark.e2e
def test_each_site_key_was_born_in_its_own_volume_and_never_reached_the_coordinator(
        stack) -> None:
    """The sites' keys were made by their own key jobs; the coordinator's volumes (certs,
    proxy, monitoring config, SuperLink state, metrics, runs and the bundles it writes) hold no
    site private key, only the public halves it registered (the run shows they were)."""
    out = stack.out  # type: ignore[attr-defined]
    pubs = {site: next((out / "coordinator").glob(f"*/{site}/{site}.pub"))
            for site in SITES}
    assert site_private_keys([out / "coordinator"], pubs) == []
    in_sites = site_private_keys([out / "sites"], pubs)
    for site in SITES:
        assert any(line.endswith(f"the private key of {site}") for line in in_sites), in_sites
