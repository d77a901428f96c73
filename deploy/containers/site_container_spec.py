"""What a lab's site container is: its settings, the checks before any container starts, and the
container spec built from them (pure: no Docker engine here, see
:mod:`deploy.containers.site_container`).

The site container runs ``zk0 supernode`` (SuperNode + site worker, exactly as
:mod:`deploy.lab.launcher` runs them on a bare box) in the zk0 image, configured through the
launcher's own ``ZK0_*`` variables (:class:`deploy.lab.launcher.SiteSettings`): the env is built
*from* a ``SiteSettings`` object, so a name the launcher does not read cannot slip in. The same
layout is in ``deploy/lab/docker-compose.yml``; both must stay in step (tests check it).

Layout inside the container (the image's user ``app``, uid/gid 49999, owns ``/app``)::

    /app/data/site               the lab's dataset, bind-mounted read-only
    /app/certs/ca.crt            federation CA, read-only
    /app/certs/coordinator.pub   coordinator's public key, read-only
    /app/certs/expect.json       the federation's expectation file (only with --expect FILE)
    /app/site/keys/site.key      the site key: 0600 in a 0700 folder, owned by uid 49999
    /app/site/work               the launcher's work dir (logs, runtime TLS, secret, socket)
    /app/site/cache              ZK0_CACHE (generated presets, per-run site state)

Why the key is copied, not bind-mounted: the operator's key is 0600 and owned by the operator,
so uid 49999 could not read a bind mount of it, and making it world-readable would defeat the
0600. It is written into the container (``docker cp`` semantics, owner 49999, mode 0600) before
the container starts, and disappears with the container on ``stop``.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from certs.checks import check_ca, check_site_key
from deploy.lab.launcher import (
    SiteConfigError,
    SiteSettings,
    coordinator_pub_problem,
    parse_superlink_address,
)
from deploy.monitoring.metrics_export import SITE_PORT

# The tag docker-compose.yml, deploy/lab/docker-compose.yml and the Dockerfile's build lines use.
DEFAULT_IMAGE = "zk0:dev"
# The image's user (Flower's images use the same ids; the Dockerfile creates it).
CONTAINER_UID = 49999
CONTAINER_GID = 49999

DATASET_DIR = "/app/data/site"
CA_FILE = "/app/certs/ca.crt"
COORDINATOR_PUB_FILE = "/app/certs/coordinator.pub"
EXPECT_FILE = "/app/certs/expect.json"
SITE_DIR = "/app/site"  # exists in the image, 0700, owned by uid 49999
KEY_DIR = f"{SITE_DIR}/keys"
KEY_FILE = f"{KEY_DIR}/site.key"
WORK_DIR = f"{SITE_DIR}/work"
CACHE_DIR = f"{SITE_DIR}/cache"
RUNTIME_PORT = 9094  # the SuperNode's runtime API inside the container (TLS, loopback)

# Set by zk0 from this module's settings: passing them with --set would break the layout.
MANAGED = frozenset({
    "superlink", "site_name", "ca_cert", "coordinator_pub", "site_key", "dataset_root",
    "work_dir", "expect", "eval_episodes", "device", "runtime_host", "runtime_port",
    "metrics_listen", "metrics_dir", "superexec_secret_file",
})

GpuMode = Literal["auto", "none", "all"]
RestartPolicy = Literal["unless-stopped", "on-failure", "always", "no"]
NetworkMode = Literal["bridge", "host"]
BUILT_IN_EXPECTATIONS = ("so100", "none")


class SiteContainerSettings(BaseSettings):
    """A lab's site container, as its operator describes it: host paths and choices.

    Flags > ``ZK0_*`` env vars > ``--env-file`` (the same ``.env`` the site's compose file
    reads, see ``deploy/lab/.env.example``). Paths are on the lab's box, not in the container.
    """

    model_config = SettingsConfigDict(env_prefix="ZK0_", env_file=None, extra="ignore")

    superlink: str = Field(
        description="The federation's entry host:port (the coordinator's reverse proxy)")
    site_name: str = Field(description="This site's name, as the coordinator registered it")
    ca_file: Path = Field(description="The federation CA certificate (PEM) from the coordinator")
    coordinator_pub_file: Path | None = Field(
        None, description="The coordinator's public key (default: coordinator.pub next to the "
        "CA file)")
    key_file: Path = Field(
        description="This site's OpenSSH EC private key (mode 0600; copied in, never mounted)")
    dataset_dir: Path = Field(
        description="The lab's LeRobotDataset folder, holding meta/info.json (mounted "
        "read-only; readable by uid 49999)")
    image: str = Field(DEFAULT_IMAGE, description="The zk0 image (never pulled)")
    expect: str = Field(
        "so100", description="What the federation expects of the data: so100, none, or the "
        "coordinator's features JSON on this box (mounted read-only)")
    eval_episodes: int = Field(2, ge=1, description="Whole episodes held out for evaluation")
    device: str = Field(
        "auto", description="Torch device inside the container: auto, cpu, cuda or cuda:N")
    gpus: GpuMode = Field(
        "auto", description="auto: all GPUs when nvidia-smi lists one; all: always (the engine "
        "needs the NVIDIA container toolkit); none: never")
    restart: RestartPolicy = Field("unless-stopped", description="The container's restart policy")
    network: NetworkMode = Field(
        "bridge", description="bridge, or host (then give each site on the box its own "
        "--runtime-port)")
    metrics_host: str = Field(
        "127.0.0.1", description="Address on this box where /metrics is published, or off")
    metrics_port: int = Field(SITE_PORT, ge=1, le=65535, description="Port of /metrics on this box")
    runtime_port: int = Field(
        RUNTIME_PORT, ge=1, le=65535,
        description="The SuperNode's runtime port in the container (distinct per site with "
        "--network host)")
    shm_size: str = Field(
        "2g", description="Size of /dev/shm, through which DataLoader workers share batches "
        "(Docker's default: 64 MB; no flag: environment or --env-file only)")
    stop_timeout: int = Field(
        30, ge=1, description="Seconds between SIGTERM and SIGKILL on stop")
    launcher: dict[str, str] = Field(
        default_factory=dict,
        description="Other zk0 supernode settings (SiteSettings field names, e.g. "
        "torch_threads), passed to the container as ZK0_* (flag --set NAME=VALUE)")

    @property
    def container_name(self) -> str:
        return f"zk0-site-{self.site_name}"

    @property
    def coordinator_pub_path(self) -> Path:
        return (self.coordinator_pub_file or self.ca_file.parent / "coordinator.pub")

    @property
    def expect_path(self) -> Path | None:
        """The expectation file on the box, or None for a built-in expectation."""
        return None if self.expect in BUILT_IN_EXPECTATIONS else Path(self.expect)

    @property
    def container_expect(self) -> str:
        return self.expect if self.expect_path is None else EXPECT_FILE

    @property
    def metrics_on(self) -> bool:
        return self.metrics_host.strip().lower() not in ("", "off")


# -- checks before anything starts -------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def container_can_read(path: Path, *, directory: bool = False) -> bool:
    """Whether uid/gid 49999 (not the operator) may read ``path`` (and enter it, if a folder):
    a dataset readable only by the operator fails inside the container with a bare
    PermissionError, so it is named here first."""
    st = path.stat()
    need = 0o5 if directory else 0o4
    if st.st_uid == CONTAINER_UID:
        return (st.st_mode >> 6) & need == need
    if st.st_gid == CONTAINER_GID:
        return (st.st_mode >> 3) & need == need
    return st.st_mode & need == need


def key_problem(path: Path) -> str | None:
    """Why ``path`` cannot be this site's key (missing, unsafe mode, not a key Flower takes)."""
    where = f"--key-file / ZK0_KEY_FILE {path}"
    if not path.is_file():
        return f"{where}: file not found (expected this site's OpenSSH EC private key)"
    mode = _mode(path)
    if mode & 0o077:
        return (f"{where}: mode {mode:04o} lets others read the key; expected 0600 "
                f"(run: chmod 600 {path})")
    try:
        check_site_key(path)
    except ValueError as err:
        return f"--key-file / ZK0_KEY_FILE: {err}"
    return None


def dataset_problems(path: Path) -> list[str]:
    """The dataset folder exists, looks like a LeRobotDataset and the container user can read
    it (the full check runs in the container: ``zk0 check-dataset``)."""
    where = f"--dataset-dir / ZK0_DATASET_DIR {path}"
    if not path.exists():
        return [f"{where}: folder not found (expected the lab's LeRobotDataset folder)"]
    if not path.is_dir():
        return [f"{where}: not a folder (expected the LeRobotDataset folder, with meta/info.json)"]
    info = path / "meta" / "info.json"
    if not info.is_file():
        return [f"{where}: no meta/info.json: not a LeRobot v3 dataset folder"]
    problems = []
    for item, is_dir in ((path, True), (path / "meta", True), (info, False)):
        if not container_can_read(item, directory=is_dir):
            problems.append(
                f"{where}: {item} (mode {_mode(item):04o}) is not readable by the container "
                f"user uid {CONTAINER_UID}; expected it world-readable (chmod -R o+rX {path}) "
                f"or group {CONTAINER_GID} (chgrp -R {CONTAINER_GID} {path}; chmod -R g+rX)"
            )
    return problems


def check_settings(settings: SiteContainerSettings) -> SiteSettings:
    """Every check that needs no Docker engine; raises :class:`SiteConfigError` listing all.

    Returns the launcher's settings as the container will see them (so the launcher's own
    checks of names and values, e.g. the site name's characters, run here first).
    """
    problems: list[str] = []
    try:
        parse_superlink_address(settings.superlink)
    except ValueError as err:
        problems.append(f"--superlink / ZK0_SUPERLINK: {err}")
    if not settings.ca_file.is_file():
        problems.append(f"--ca-file / ZK0_CA_FILE {settings.ca_file}: file not found "
                        "(expected the federation CA certificate the coordinator ships)")
    else:
        try:
            check_ca(settings.ca_file)
        except ValueError as err:
            problems.append(f"--ca-file / ZK0_CA_FILE: {err}")
    if (pub_problem := coordinator_pub_problem(
            settings.coordinator_pub_path,
            "--coordinator-pub-file / ZK0_COORDINATOR_PUB_FILE")) is not None:
        problems.append(pub_problem)
    if (problem := key_problem(settings.key_file)) is not None:
        problems.append(problem)
    problems.extend(dataset_problems(settings.dataset_dir))
    if settings.expect_path is not None and not settings.expect_path.is_file():
        problems.append(f"--expect / ZK0_EXPECT {settings.expect}: expected so100, none or "
                        "the features JSON file the coordinator publishes (file not found)")
    for name in settings.launcher:
        if name in MANAGED:
            problems.append(f"--set {name}: set by zk0 site-container itself; use its own flag")
        elif name not in SiteSettings.model_fields:
            problems.append(f"--set {name}: not a zk0 supernode setting (known: "
                            f"{', '.join(sorted(set(SiteSettings.model_fields) - MANAGED))})")
    launcher: SiteSettings | None = None
    if not problems:
        try:
            launcher = launcher_settings(settings)
            launcher.node_config()
        except (ValueError, SiteConfigError) as err:
            problems.extend(str(err).splitlines())
    if problems or launcher is None:
        raise SiteConfigError("\n".join(problems))
    return launcher


# -- the containers ----------------------------------------------------------------------------


def launcher_settings(settings: SiteContainerSettings) -> SiteSettings:
    """``zk0 supernode``'s settings inside the container (container paths)."""
    listen_host = settings.metrics_host if settings.network == "host" else "0.0.0.0"
    values: dict[str, Any] = {
        **settings.launcher,
        "superlink": settings.superlink,
        "site_name": settings.site_name,
        "ca_cert": CA_FILE,
        "coordinator_pub": COORDINATOR_PUB_FILE,
        "site_key": KEY_FILE,
        "dataset_root": DATASET_DIR,
        "work_dir": WORK_DIR,
        "expect": settings.container_expect,
        "eval_episodes": settings.eval_episodes,
        "device": settings.device,
        "runtime_port": settings.runtime_port,
        "metrics_listen": (f"{listen_host}:{settings.metrics_port}" if settings.metrics_on
                           else "off"),
    }
    try:
        return _GivenSiteSettings(**values)
    except ValueError as err:
        raise SiteConfigError(str(err)) from None


class _GivenSiteSettings(SiteSettings):
    """The launcher's settings from the given values only: this box's own ``ZK0_*`` variables
    and ``.env`` describe this box, not the container, and must not leak into it."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def launcher_env(launcher: SiteSettings) -> dict[str, str]:
    """``ZK0_<FIELD>`` for every launcher setting that differs from its default (so the
    launcher reads exactly what was checked), plus the image's health probe target: the
    SuperNode's runtime ``/health`` over the runtime TLS the launcher makes."""
    env: dict[str, str] = {}
    for name, info in SiteSettings.model_fields.items():
        value = getattr(launcher, name)
        if value is None or (name not in launcher.model_fields_set and value == info.default):
            continue
        env[f"ZK0_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["ZK0_CACHE"] = CACHE_DIR
    env["ZK0_HEALTH_URL"] = f"https://127.0.0.1:{launcher.runtime_port}/health"
    env["ZK0_HEALTH_CA"] = str(launcher.runtime_tls_dir / "ca.crt")
    env["HF_HUB_OFFLINE"] = "1"  # the federation is the site's only network peer
    return env


@dataclass(frozen=True)
class BindMount:
    """A host path mounted into the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerFile:
    """A file written into the container before it starts (path only: the bytes are read at
    copy time, so the spec can be printed and compared without holding key material)."""

    source: Path
    target: str
    uid: int = CONTAINER_UID
    gid: int = CONTAINER_GID
    mode: int = 0o600
    dir_mode: int = 0o700  # of the file's folder, created with the same owner


@dataclass(frozen=True)
class ContainerSpec:
    """One container, as the engine will be asked for it; :meth:`create_kwargs` is the call."""

    name: str
    image: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    mounts: tuple[BindMount, ...]
    user: str = f"{CONTAINER_UID}:{CONTAINER_GID}"
    entrypoint: tuple[str, ...] = ("zk0",)
    network_mode: str = "bridge"
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    gpu: bool = False
    restart: RestartPolicy = "no"
    labels: Mapping[str, str] = field(default_factory=dict)
    files: tuple[ContainerFile, ...] = ()
    shm_size: str | None = None

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``docker.DockerClient.containers.create``."""
        from docker.types import DeviceRequest, Mount

        restart: dict[str, Any] = {"Name": "" if self.restart == "no" else self.restart}
        if self.restart == "on-failure":
            restart["MaximumRetryCount"] = 0  # 0: no limit; a site keeps trying to rejoin
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "entrypoint": list(self.entrypoint),
            "command": list(self.command),
            "environment": dict(self.environment),
            "user": self.user,
            "mounts": [Mount(m.target, str(m.source), type="bind", read_only=m.read_only)
                       for m in self.mounts],
            "network_mode": self.network_mode,
            "restart_policy": restart,
            "labels": dict(self.labels),
            "stop_signal": "SIGTERM",
            "init": True,  # reaps ClientApp processes whose SuperExec exited; forwards signals
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if self.ports and self.network_mode != "host":
            kwargs["ports"] = dict(self.ports)
        if self.gpu:
            kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if self.shm_size:
            kwargs["shm_size"] = self.shm_size
        return kwargs


def _labels(settings: SiteContainerSettings, role: str) -> dict[str, str]:
    return {"org.zk0.role": role, "org.zk0.site": settings.site_name}


def _data_mounts(settings: SiteContainerSettings) -> list[BindMount]:
    mounts = [BindMount(settings.dataset_dir.resolve(), DATASET_DIR)]
    if settings.expect_path is not None:
        mounts.append(BindMount(settings.expect_path.resolve(), EXPECT_FILE))
    return mounts


def check_spec(settings: SiteContainerSettings) -> ContainerSpec:
    """The one-shot dataset check: same image, user and dataset mount as the site, no network
    (it needs none), no key: ``zk0 check-dataset`` must pass before the site may join."""
    return ContainerSpec(
        name=f"{settings.container_name}-check",
        image=settings.image,
        command=("check-dataset", DATASET_DIR, "--expect", settings.container_expect,
                 "--eval-episodes", str(settings.eval_episodes)),
        environment={"ZK0_CACHE": "/tmp/zk0-cache", "HF_HUB_OFFLINE": "1"},
        mounts=tuple(_data_mounts(settings)),
        network_mode="none",
        labels=_labels(settings, "site-check"),
    )


def site_spec(settings: SiteContainerSettings, launcher: SiteSettings, *, gpu: bool
              ) -> ContainerSpec:
    """The site container: ``zk0 supernode`` with the launcher's env, read-only dataset and
    federation files, the key copied in as 0600/uid 49999, restart policy, GPU if ``gpu``."""
    mounts = [
        *_data_mounts(settings),
        BindMount(settings.ca_file.resolve(), CA_FILE),
        BindMount(settings.coordinator_pub_path.resolve(), COORDINATOR_PUB_FILE),
    ]
    ports: dict[str, tuple[str, int]] = {}
    if settings.metrics_on:
        ports[f"{settings.metrics_port}/tcp"] = (settings.metrics_host, settings.metrics_port)
    return ContainerSpec(
        name=settings.container_name,
        image=settings.image,
        command=("supernode",),
        environment=launcher_env(launcher),
        mounts=tuple(mounts),
        network_mode=settings.network,
        ports=ports,
        gpu=gpu,
        restart=settings.restart,
        labels=_labels(settings, "site"),
        files=(ContainerFile(settings.key_file.resolve(), KEY_FILE),),
        shm_size=settings.shm_size,
    )


def decide_gpu(mode: GpuMode, host_gpus: int) -> bool:
    """Request GPUs? ``auto``: when the box has one; ``all``: always (the engine then needs the
    NVIDIA container toolkit); ``none``: never (the site trains on CPU)."""
    return mode == "all" or (mode == "auto" and host_gpus > 0)
