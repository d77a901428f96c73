"""``zk0 site-container start|status|logs|stop``: this lab's site as one container, through the
Docker SDK (the same container ``deploy/lab/docker-compose.yml`` describes).

``start`` checks everything it can on the box first (SuperLink address, CA, coordinator key, the
site key's mode, the dataset folder; :mod:`deploy.containers.site_container_spec`), then the
engine (reachable,
image present), then runs ``zk0 check-dataset`` in a one-shot container of the same image with
the same read-only dataset mount and refuses to join if it fails. Only then the site container
is created, the key copied into it (0600, owned by the container user), and started with a
restart policy; ``start`` waits until the image's health check passes and the SuperNode has
joined, and says so. ``stop`` sends SIGTERM (the launcher stops the worker and the SuperNode
by PID), SIGKILL after ``--timeout``, then removes the container: nothing of the site (key
copy, runtime TLS, logs) stays behind.

Why the SDK and not ``docker run``: each step's failure is an exception with a status, so every
refusal here names the path or value at fault instead of leaving a half-started container.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from deploy.containers.site_container_spec import (
    ContainerFile,
    ContainerSpec,
    SiteContainerSettings,
    check_settings,
    check_spec,
    decide_gpu,
    site_spec,
)
from deploy.lab.launcher import SiteConfigError, add_setting_flags, validation_problems

EXIT_REFUSED = 2  # settings, engine, image or dataset: nothing was started
EXIT_NOT_READY = 1  # started, but not healthy and joined within --wait
CHECK_TIMEOUT_S = 900.0
JOINED = "connected as node"  # deploy.lab.launcher prints "site 'x' connected as node N"

Say = Callable[[str], object]


class SiteContainerError(RuntimeError):
    """Refused before the site container started; the message names what and where."""


# -- engine ------------------------------------------------------------------------------------


def connect() -> Any:
    """A Docker client that answered a ping, or :class:`SiteContainerError` saying where the
    engine was looked for (``DOCKER_HOST`` or the default socket)."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as err:
        raise SiteContainerError(
            f"Docker engine unreachable at {where} (DOCKER_HOST): {err}. Expected a running "
            "dockerd this user may use (root or the docker group)."
        ) from None
    return client


def require_image(client: Any, image: str) -> None:
    """The image must already be on this engine: zk0 never pulls behind the operator's back."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        raise SiteContainerError(
            f"--image / ZK0_IMAGE {image}: image not found on this Docker engine; expected the "
            "zk0 image (build it in the zk0 repo: DOCKER_BUILDKIT=0 docker build --network host "
            f"-t {image} . , or docker load it)"
        ) from None


def host_gpu_count() -> int:
    """GPUs ``nvidia-smi -L`` lists on this box (0 without the NVIDIA driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _find(client: Any, name: str) -> Any | None:
    from docker.errors import NotFound

    try:
        return client.containers.get(name)
    except NotFound:
        return None


def _remove(container: Any) -> None:
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):
        container.remove(force=True)


def key_archive(item: ContainerFile) -> tuple[str, bytes]:
    """``(folder to extract at, tar bytes)`` writing ``item`` with its owner and modes.

    The tar holds the file's folder and the file, both owned by the container user, so the key
    is 0600 in a 0700 folder whatever the operator's own uid is.
    """
    target = PurePosixPath(item.target)
    folder = target.parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder_info = _tar_info(folder.name, item, item.dir_mode)
        folder_info.type = tarfile.DIRTYPE
        tar.addfile(folder_info)
        data = item.source.read_bytes()
        file_info = _tar_info(f"{folder.name}/{target.name}", item, item.mode)
        file_info.size = len(data)
        tar.addfile(file_info, io.BytesIO(data))
    return str(folder.parent), buf.getvalue()


def _tar_info(name: str, item: ContainerFile, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = mode, item.uid, item.gid, int(time.time())
    return info


def create(client: Any, spec: ContainerSpec) -> Any:
    """Create (not start) the container and copy its files in; removed again on failure."""
    from docker.errors import APIError

    container = client.containers.create(**spec.create_kwargs())
    try:
        for item in spec.files:
            path, data = key_archive(item)
            if not container.put_archive(path, data):
                raise SiteContainerError(f"could not copy {item.source} to {item.target}")
    except (APIError, OSError) as err:
        _remove(container)
        raise SiteContainerError(
            f"copying the site key into {spec.image}:{PurePosixPath(spec.files[0].target).parent}"
            f" failed ({err}); expected a zk0 image (it has /app/site owned by uid 49999)"
        ) from None
    except BaseException:
        _remove(container)
        raise
    return container


# -- the dataset check -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """``zk0 check-dataset`` in its one-shot container: exit status and what it printed."""

    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_check(client: Any, settings: SiteContainerSettings, timeout: float = CHECK_TIMEOUT_S
              ) -> CheckResult:
    """Run the dataset check of :func:`check_spec` to its end; the container is removed."""
    spec = check_spec(settings)
    if (old := _find(client, spec.name)) is not None:  # left by an interrupted start
        _remove(old)
    container = create(client, spec)
    try:
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except Exception as err:  # requests' ReadTimeout: the check hangs
            return CheckResult(124, f"check did not finish within {timeout:.0f} s ({err})")
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return CheckResult(int(status.get("StatusCode", 1)), output)
    finally:
        _remove(container)


def refusal(settings: SiteContainerSettings, result: CheckResult, tail: int = 40) -> str:
    """The message when the dataset check fails: which dataset, which check, what it found."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    shown = "\n".join(f"    {line}" for line in lines[-tail:])
    return (
        f"dataset {settings.dataset_dir} failed `zk0 check-dataset --expect "
        f"{settings.expect} --eval-episodes {settings.eval_episodes}` (exit {result.exit_code})"
        f"; the site does not join with it. What the check found:\n{shown}"
    )


# -- start, status, logs, stop -----------------------------------------------------------------


@dataclass(frozen=True)
class SiteStatus:
    """What ``status`` shows: the container's state, the image's health check and restarts."""

    name: str
    state: str  # created | running | restarting | exited | ...
    health: str | None  # starting | healthy | unhealthy; None: the image has no HEALTHCHECK
    restarts: int
    exit_code: int | None
    image: str
    gpu: bool

    @classmethod
    def of(cls, container: Any) -> SiteStatus:
        container.reload()
        state = container.attrs.get("State", {})
        host = container.attrs.get("HostConfig", {})
        return cls(
            name=container.name,
            state=str(state.get("Status", "?")),
            health=(state.get("Health") or {}).get("Status"),
            restarts=int(container.attrs.get("RestartCount", 0)),
            exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
            image=str(container.attrs.get("Config", {}).get("Image", "?")),
            gpu=bool(host.get("DeviceRequests")),
        )

    def line(self) -> str:
        parts = [f"{self.name}: {self.state}", f"health {self.health or 'none'}",
                 f"restarts {self.restarts}", f"image {self.image}",
                 "gpu" if self.gpu else "cpu"]
        if self.exit_code is not None:
            parts.append(f"exit code {self.exit_code}")
        return ", ".join(parts)


def wait_ready(container: Any, timeout: float, say: Say) -> tuple[SiteStatus, str | None]:
    """Until healthy and joined, the container stopped or restarted, or ``timeout``: the last
    status and the launcher's "connected as node N" line (None: not joined)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        status = SiteStatus.of(container)
        if status.line() != last:
            say(f"zk0 site-container: {status.line()}")
            last = status.line()
        if status.state in ("exited", "dead") or status.restarts > 0:
            return status, None
        joined = [line.strip() for line in _logs(container, tail=400).splitlines()
                  if JOINED in line]
        if status.health == "healthy" and joined:
            return status, joined[-1]
        if time.monotonic() > deadline:
            return status, None
        time.sleep(2.0)


def _logs(container: Any, tail: int | str = "all") -> str:
    return container.logs(stdout=True, stderr=True, tail=tail).decode("utf-8", "replace")


def start(settings: SiteContainerSettings, *, wait: float, replace: bool = False,
          say: Say = print) -> int:
    """Check, check the dataset in a container, then create, fill and start the site."""
    launcher = check_settings(settings)
    client = connect()
    require_image(client, settings.image)
    if (old := _find(client, settings.container_name)) is not None:
        if not replace:
            raise SiteContainerError(
                f"container {settings.container_name} already exists "
                f"({SiteStatus.of(old).line()}); stop it first (zk0 site-container stop "
                f"--site-name {settings.site_name}) or pass --replace")
        stop_container(old, settings.stop_timeout, say)
    gpus = host_gpu_count()
    gpu = decide_gpu(settings.gpus, gpus)
    say(f"zk0 site-container: GPUs on this box: {gpus}; --gpus {settings.gpus}: "
        f"{'requesting all GPUs' if gpu else 'no GPU (the site trains on CPU)'}")
    say(f"zk0 site-container: checking dataset {settings.dataset_dir} in {settings.image} ...")
    result = run_check(client, settings)
    if not result.ok:
        raise SiteContainerError(refusal(settings, result))
    say(f"zk0 site-container: dataset {settings.dataset_dir} passed zk0 check-dataset")
    spec = site_spec(settings, launcher, gpu=gpu)
    container = create(client, spec)
    try:
        container.start()
    except Exception as err:
        _remove(container)
        hint = ""
        if gpu and "capabilities" in str(err):
            hint = (" (GPU requested but this engine cannot provide one: install the NVIDIA "
                    "container toolkit, or pass --gpus none)")
        raise SiteContainerError(f"starting {spec.name} failed: {err}{hint}") from None
    say(f"zk0 site-container: started {spec.name} (restart policy {settings.restart}); "
        f"waiting up to {wait:.0f} s until healthy and joined")
    status, joined = wait_ready(container, wait, say)
    if joined is not None:
        say(f"zk0 site-container: {joined}")
        return 0
    say(_logs(container, tail=40))
    say(f"zk0 site-container: {spec.name} is not healthy and joined ({status.line()}); see the "
        f"log above. Its restart policy ({settings.restart}) keeps it trying; stop it with "
        f"`zk0 site-container stop --site-name {settings.site_name}`")
    return EXIT_NOT_READY


def stop_container(container: Any, timeout: int, say: Say) -> None:
    """SIGTERM, SIGKILL after ``timeout`` s, then remove (with the key copy inside it)."""
    from docker.errors import NotFound

    try:
        container.stop(timeout=timeout)
        code = container.wait(timeout=timeout + 30).get("StatusCode")
        say(f"zk0 site-container: {container.name} stopped (exit code {code})")
    except NotFound:
        return
    _remove(container)
    say(f"zk0 site-container: {container.name} removed")


def existing(client: Any, site_name: str) -> Any:
    """The site's container, or :class:`SiteContainerError` naming the one looked for."""
    name = f"zk0-site-{site_name}"
    container = _find(client, name)
    if container is None:
        raise SiteContainerError(f"no container {name} on this engine (--site-name "
                                 f"{site_name}); start it with zk0 site-container start")
    return container


# -- CLI ---------------------------------------------------------------------------------------

# The settings ``start`` takes as flags, with the type argparse reads each as; the help is the
# field's description (SiteContainerSettings).
_START_FLAGS: dict[str, Callable[[str], Any]] = {
    "superlink": str, "ca_file": Path, "coordinator_pub_file": Path, "key_file": Path,
    "dataset_dir": Path, "image": str, "expect": str, "eval_episodes": int, "device": str,
    "gpus": str, "restart": str, "network": str, "metrics_host": str, "metrics_port": int,
    "runtime_port": int, "stop_timeout": int,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``start`` takes the site's settings (flags > ZK0_* env > --env-file); the others only
    the site name."""
    sub = p.add_subparsers(dest="action", required=True)
    start_p = sub.add_parser("start", help="check, check the dataset, then start and wait")
    add_setting_flags(start_p, SiteContainerSettings, _START_FLAGS)
    start_p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                         help="another zk0 supernode setting, e.g. torch_threads=4")
    start_p.add_argument("--wait", type=float, default=600.0,
                         help="seconds to wait until healthy and joined (default 600)")
    start_p.add_argument("--replace", action="store_true",
                         help="stop and remove an existing container of this site first")
    status_p = sub.add_parser("status", help="state, health and restarts of the site container")
    logs_p = sub.add_parser("logs", help="the site container's log")
    logs_p.add_argument("--tail", type=_tail, default=200,
                        help="last N lines, or 'all' (default 200)")
    logs_p.add_argument("-f", "--follow", action="store_true", help="follow until Ctrl-C")
    stop_p = sub.add_parser("stop", help="SIGTERM, SIGKILL after --timeout, remove")
    stop_p.add_argument("--timeout", type=int, default=None,
                        help="seconds before SIGKILL (default 30)")
    for q in (start_p, status_p, logs_p, stop_p):
        q.add_argument("--site-name", default=None, help="the site's name [ZK0_SITE_NAME]")
        q.add_argument("--env-file", type=Path, default=None,
                       help="read ZK0_* settings from this file (e.g. deploy/lab/.env)")


def _tail(value: str) -> int | str:
    if value == "all":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of lines or 'all'")
    return int(value)


def _env_file_values(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    if not path.is_file():
        raise SiteConfigError(f"--env-file {path}: file not found")
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def settings_from_args(args: argparse.Namespace) -> SiteContainerSettings:
    """Flags over ``ZK0_*`` env over ``--env-file``; SiteConfigError names missing values."""
    given = {k: getattr(args, k) for k in _START_FLAGS if getattr(args, k, None) is not None}
    if args.site_name is not None:
        given["site_name"] = args.site_name
    launcher: dict[str, str] = {}
    for item in getattr(args, "set", []):
        name, sep, value = item.partition("=")
        if not sep:
            raise SiteConfigError(f"--set {item!r}: expected NAME=VALUE")
        launcher[name.strip().lower().removeprefix("zk0_")] = value
    if launcher:
        given["launcher"] = launcher
    try:
        if args.env_file is not None:
            _env_file_values(args.env_file)  # names a missing file
            return SiteContainerSettings(_env_file=args.env_file, **given)  # type: ignore[call-arg]
        return SiteContainerSettings(**given)
    except ValidationError as err:
        raise SiteConfigError(validation_problems(err)) from None


def _site_name(args: argparse.Namespace) -> str:
    name = args.site_name or os.environ.get("ZK0_SITE_NAME") or _env_file_values(
        args.env_file).get("ZK0_SITE_NAME")
    if not name:
        raise SiteConfigError("--site-name / ZK0_SITE_NAME: missing (which site's container)")
    return name


def run_cli(args: argparse.Namespace) -> int:
    """``zk0 site-container ACTION``; refusals exit 2 with one line per problem."""
    try:
        if args.action == "start":
            return start(settings_from_args(args), wait=args.wait, replace=args.replace)
        site = _site_name(args)
        container = existing(connect(), site)
        if args.action == "status":
            status = SiteStatus.of(container)
            print(status.line())
            return 0 if status.state == "running" and status.health != "unhealthy" else 1
        if args.action == "logs":
            tail = args.tail
            if args.follow:
                try:
                    for chunk in container.logs(stream=True, follow=True, tail=tail):
                        sys.stdout.write(chunk.decode("utf-8", "replace"))
                        sys.stdout.flush()
                except KeyboardInterrupt:
                    pass
                return 0
            sys.stdout.write(_logs(container, tail=tail))
            return 0
        timeout = args.timeout or SiteContainerSettings.model_fields["stop_timeout"].default
        stop_container(container, timeout, print)
        return 0
    except (SiteConfigError, SiteContainerError) as err:
        print(f"zk0 site-container {args.action}: refusing:", file=sys.stderr)
        for line in str(err).splitlines():
            print(f"  {line}" if line.startswith("    ") else f"  - {line}", file=sys.stderr)
        return EXIT_REFUSED
