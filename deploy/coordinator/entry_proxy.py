"""The labs' entry: nginx in front of the SuperLink, forwarding only what a SuperNode needs.

Why: Flower 1.42 serves its Fleet, Control and Runtime APIs on one port and open-source Flower
has no authentication on the Control API: anyone who reaches that port can list, start and stop
runs and register a key of their own (which defeats node authentication). So the SuperLink
listens on a private address and the labs dial this proxy, which forwards ``/v1/fleet/*`` and
``/health`` and answers 403 to everything else. The configuration is one template,
``deploy/coordinator/proxy/nginx.conf.template``, filled here (``zk0 cluster``, tests) or by
``envsubst`` in a container.

nginx runs unprivileged with its own prefix: config, pid, logs and temp folders in one 0700
folder, started in the foreground as a :class:`~deploy.flower.processes.ManagedProcess` (its own
process group, stopped by PID). The folder holds no secret: the config names the key's path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from certs.files import private_dir
from common import atomic
from deploy.flower.health import https_ok
from deploy.flower.processes import ManagedProcess

TEMPLATE = Path(__file__).resolve().parent / "proxy" / "nginx.conf.template"
_PLACEHOLDER = re.compile(r"\$\{(ZK0_[A-Z0-9_]+)\}")
_SUBDIRS = ("logs", "tmp")


class ProxyError(RuntimeError):
    """nginx is missing, or refuses the configuration (the message has its output)."""


def find_nginx() -> str | None:
    """The nginx binary (on PATH, else Debian's /usr/sbin/nginx, not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    debian = Path("/usr/sbin/nginx")
    return str(debian) if debian.is_file() else None


@dataclass(frozen=True)
class ProxySettings:
    """What the template needs: where the labs dial, where the SuperLink is, TLS files."""

    listen: str  # host:port the labs dial (the entry), e.g. 0.0.0.0:443
    superlink: str  # host:port of the SuperLink on its private address
    cert: Path  # the federation's server certificate: names the entry (SANs)
    key: Path
    ca: Path  # verifies the SuperLink's certificate
    folder: Path  # nginx.conf, pid, logs/, tmp/ (0700)
    superlink_tls_name: str = "localhost"  # a DNS SAN of the SuperLink's certificate

    @property
    def conf(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.folder / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.folder / "logs" / "error.log"

    def values(self) -> dict[str, str]:
        return {
            "ZK0_PROXY_LISTEN": self.listen,
            "ZK0_SUPERLINK_ADDRESS": self.superlink,
            "ZK0_SUPERLINK_TLS_NAME": self.superlink_tls_name,
            "ZK0_PROXY_CERT": str(Path(self.cert).resolve()),
            "ZK0_PROXY_KEY": str(Path(self.key).resolve()),
            "ZK0_CA_CERT": str(Path(self.ca).resolve()),
            "ZK0_PROXY_DIR": str(Path(self.folder).resolve()),
        }


def render(settings: ProxySettings, template: Path = TEMPLATE) -> str:
    """The template with every ``${ZK0_*}`` placeholder filled; an unknown one is an error."""
    values = settings.values()
    for name, value in values.items():
        if not value or any(c in value for c in ";{}\"'\n\\") or " " in value.strip():
            raise ProxyError(f"proxy setting {name}={value!r}: empty or not a plain word/path")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ProxyError(f"{template}: unknown placeholder ${{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template.read_text())


def prepare_folder(settings: ProxySettings) -> Path:
    """The proxy's 0700 folder with its logs/ and tmp/, and the rendered config (0600) in it:
    all nginx needs besides the TLS files (the compose stack's init writes it for an nginx
    container: :mod:`deploy.containers.compose_stack`)."""
    private_dir(settings.folder, tighten=True)
    for sub in _SUBDIRS:
        private_dir(settings.folder / sub, tighten=True)
    return atomic.write_bytes(settings.conf, render(settings).encode(), 0o600)


class EntryProxy:
    """nginx as the labs' entry: write the config, check it, run it, wait until it answers."""

    def __init__(self, settings: ProxySettings, nginx: str | None = None) -> None:
        exe = nginx or find_nginx()
        if exe is None:
            raise ProxyError(
                "nginx not found (Debian/Ubuntu: apt-get install nginx-light; scripts/"
                "system-deps.sh does it as root)"
            )
        self.nginx = exe
        self.settings = settings
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return self.settings.listen

    def _cmd(self, *extra: str) -> list[str]:
        s = self.settings
        folder = Path(s.folder).resolve()
        # -p: its own prefix; -e: error log before the config is read (not /var/log/nginx)
        return [self.nginx, "-p", f"{folder}/", "-c", str(folder / s.conf.name),
                "-e", str(folder / "logs" / s.error_log.name), *extra]

    def write_config(self) -> Path:
        """Render the config into the (0700) folder and have nginx check it (``nginx -t``)."""
        s = self.settings
        prepare_folder(s)
        check = subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30,
                               check=False, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise ProxyError(f"nginx -t refused {s.conf}:\n{(check.stdout + check.stderr).strip()}")
        return s.conf

    def start(self, log_path: Path, timeout: float = 30.0) -> ManagedProcess:
        """Start nginx in the foreground and wait until ``/health`` answers through it."""
        self.write_config()
        self.process = ManagedProcess("entry-proxy", self._cmd("-g", "daemon off;"), log_path)
        self.process.start()
        self.process.wait_healthy(
            lambda: https_ok(self.address, self.settings.ca),
            timeout,
            what=f"forwarding https://{self.address}/health to the SuperLink",
        )
        return self.process

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)
