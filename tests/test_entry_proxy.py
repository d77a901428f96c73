"""The labs' entry configuration (deploy/coordinator/proxy/nginx.conf.template) and the repo's
secrets: fast checks without a cluster (tests/test_shielded_cluster.py runs the proxy for real)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from certs import ensure_federation_certs
from deploy.coordinator.entry_proxy import TEMPLATE, EntryProxy, ProxyError, ProxySettings, render

REPO = Path(__file__).resolve().parent.parent


def _settings(tmp_path: Path, **over) -> ProxySettings:
    fed = ensure_federation_certs(tmp_path / "certs", sites=[])
    values = dict(listen="127.0.0.1:18443", superlink="127.0.0.1:18444", cert=fed.server_cert,
                  key=fed.server_key, ca=fed.ca_cert, folder=tmp_path / "proxy")
    values.update(over)
    return ProxySettings(**values)


def test_template_allows_only_the_fleet_calls_and_health(tmp_path: Path) -> None:
    text = render(_settings(tmp_path))
    assert re.search(r"\$\{ZK0_[A-Z0-9_]+\}", text) is None  # every placeholder filled
    assert "listen 127.0.0.1:18443 ssl;" in text
    assert "server 127.0.0.1:18444;" in text
    allowed = re.search(r'"~\^/v1/fleet/\((.*)\)\$" 1;', text)
    assert allowed is not None
    methods = set(allowed.group(1).split("|"))
    assert {"pull-messages", "push-messages", "push-object", "pull-object"} <= methods
    assert "register-node" not in methods
    # everything else, explicitly
    assert re.search(r"location / \{\s*return 403;", text)
    assert "proxy_ssl_verify on;" in text and "proxy_request_buffering off;" in text
    # nginx's own variables are left for nginx
    assert "$request_uri" in text and "$zk0_fleet_call" in text


def test_values_that_could_inject_nginx_directives_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProxyError, match="ZK0_PROXY_LISTEN"):
        render(_settings(tmp_path, listen="127.0.0.1:1; include /etc/passwd"))
    bad = tmp_path / "template"
    bad.write_text("listen ${ZK0_NOT_A_SETTING};")
    with pytest.raises(ProxyError, match="unknown placeholder"):
        render(_settings(tmp_path), bad)


def test_nginx_accepts_the_rendered_configuration(tmp_path: Path, nginx: str) -> None:
    proxy = EntryProxy(_settings(tmp_path), nginx)
    conf = proxy.write_config()  # runs nginx -t
    assert conf.stat().st_mode & 0o077 == 0
    assert (tmp_path / "proxy").stat().st_mode & 0o077 == 0


def test_the_template_ships_with_the_package() -> None:
    assert TEMPLATE.is_file() and TEMPLATE.parent.name == "proxy"
    assert "proxy/*.template" in (REPO / "pyproject.toml").read_text()


_PRIVATE_BLOCK = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*\n[A-Za-z0-9+/=]{40,}", re.MULTILINE
)


def test_no_private_key_or_generated_secret_is_tracked_by_git() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    tracked = [f.decode() for f in files if f]
    assert not [f for f in tracked if f.endswith((".key", ".secret"))]
    leaks = [f for f in tracked
             if (REPO / f).is_file() and _PRIVATE_BLOCK.search((REPO / f).read_bytes())]
    assert leaks == []
    ignored = (REPO / ".gitignore").read_text()
    assert "certs/generated" in ignored and ".zk0" in ignored


def test_key_folders_zk0_owns_are_made_private_even_when_they_exist(tmp_path: Path) -> None:
    from deploy.flower.runtime_tls import ensure_runtime_tls

    folder = tmp_path / "runtime-tls"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    tls = ensure_runtime_tls(folder)
    assert folder.stat().st_mode & 0o777 == 0o700 and tls.key.stat().st_mode & 0o777 == 0o600
    folder.chmod(0o755)
    assert ensure_runtime_tls(folder).key == tls.key  # kept, and the folder closed again
    assert folder.stat().st_mode & 0o777 == 0o700
