"""Tests for certs/: real keys, real TLS handshakes, Flower's own loaders; no mocks.

The point is to catch, before a cluster starts, what would otherwise show up as an opaque TLS or
node-auth failure on every SuperNode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.verification import PolicyBuilder, Store

from certs import (
    CertError,
    FederationCerts,
    cert_sans,
    check_ca,
    check_site_key,
    ensure_federation_certs,
    is_host_name,
    make_ca,
    make_secret,
    make_server_cert,
    make_site_key,
    missing_sans,
    verify_server_cert,
)
from certs.cli import run_cli
from deploy.cli import build_parser

SANS = ["localhost", "127.0.0.1"]
SITES = ["site-0", "site-1"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".lock"}


@pytest.fixture
def fed(tmp_path: Path) -> FederationCerts:
    return ensure_federation_certs(tmp_path / "gen", SANS, SITES)


# --------------------------------------------------------------------------- TLS handshakes


@pytest.fixture
def tls_server() -> Iterator[Callable[[Path, Path], int]]:
    """Start a one-connection TLS server on 127.0.0.1 with the given cert/key; return its port."""
    threads: list[threading.Thread] = []

    def start(cert: Path, key: Path) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        sock = socket.create_server(("127.0.0.1", 0))
        sock.settimeout(10)

        def serve() -> None:
            with sock:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(10)
                    try:
                        with ctx.wrap_socket(conn, server_side=True) as tls:
                            tls.sendall(b"ok")
                    except (ssl.SSLError, OSError):
                        pass  # the client rejected us: that is what some tests expect

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return sock.getsockname()[1]

    yield start
    for thread in threads:
        thread.join(timeout=15)


def _client(port: int, cafile: Path, hostname: str) -> bytes:
    """Connect like a SuperNode would: verify the chain against ``cafile`` and the hostname.

    VERIFY_X509_STRICT is on (Python 3.13's default) so the certs also pass newer clients.
    """
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.recv(2)


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls_handshake_with_generated_ca(fed: FederationCerts, tls_server, hostname: str) -> None:
    port = tls_server(fed.server_cert, fed.server_key)
    assert _client(port, fed.ca_cert, hostname) == b"ok"


def test_tls_handshake_fails_with_other_ca(
    fed: FederationCerts, tls_server, tmp_path: Path
) -> None:
    other_ca, _ = make_ca(tmp_path / "other")
    port = tls_server(fed.server_cert, fed.server_key)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _client(port, other_ca, "localhost")


def test_tls_hostname_not_in_sans_fails(fed: FederationCerts, tls_server) -> None:
    port = tls_server(fed.server_cert, fed.server_key)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        _client(port, fed.ca_cert, "superlink")


def test_added_san_is_served_after_regeneration(fed: FederationCerts, tls_server) -> None:
    again = ensure_federation_certs(fed.out_dir, [*SANS, "superlink"], SITES)
    assert again.actions[again.server_cert].startswith("regenerated: SAN(s) superlink")
    port = tls_server(again.server_cert, again.server_key)
    assert _client(port, again.ca_cert, "superlink") == b"ok"


def test_chain_passes_cryptography_webpki_verifier(fed: FederationCerts) -> None:
    """A second, stricter RFC 5280 profile than OpenSSL's, for both DNS and IP SANs."""
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(fed.server_cert.read_bytes())
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
        assert len(verifier.verify(leaf, [])) == 2


# --------------------------------------------------------------------------- certificate content


def test_ca_and_server_cert_extensions(fed: FederationCerts) -> None:
    ca = check_ca(fed.ca_cert)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP384R1)

    leaf = verify_server_cert(fed.ca_cert, fed.server_cert, fed.server_key)
    assert isinstance(leaf.public_key().curve, ec.SECP384R1)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sorted(fed.sans) == ["127.0.0.1", "localhost"]


def test_san_entries_parse_as_ip_or_dns(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path)
    cert, _ = make_server_cert(tmp_path, ca, ca_key, ["::1", "10.0.0.7", "SuperLink", "zk0-link"])
    assert cert_sans(x509.load_pem_x509_certificate(cert.read_bytes())) == [
        "::1",
        "10.0.0.7",
        "superlink",
        "zk0-link",
    ]
    for bad in ["", "bad name", "10.0.0.0/8", "-x.example"]:
        with pytest.raises(CertError):
            make_server_cert(tmp_path, ca, ca_key, [bad])


def test_host_names_are_one_rule_for_sans_and_addresses() -> None:
    """``is_host_name`` decides for ``--san`` and for the address a site dials alike."""
    for good in ("localhost", "zk0_superlink", "link.lab-1.example.org", "fqdn.example.", "x"):
        assert is_host_name(good), good
    for bad in ("", "bad name", "-x.example", "x-.example", "a..b", "*.example.org",
                "a" * 64, ".".join(["a" * 63] * 4) + ".abc", "host:8000", "ex/ample"):
        assert not is_host_name(bad), bad
    assert is_host_name("*.example.org", wildcard=True)
    assert not is_host_name("*.*.example.org", wildcard=True)


def test_missing_sans_compares_canonical_names(fed: FederationCerts) -> None:
    leaf = x509.load_pem_x509_certificate(fed.server_cert.read_bytes())
    assert missing_sans(leaf, ["LOCALHOST.", "127.0.0.1"]) == []
    assert missing_sans(leaf, ["superlink", "::1", "SuperLink"]) == ["superlink", "::1"]
    with pytest.raises(CertError, match="bad name"):
        missing_sans(leaf, ["bad name"])


# --------------------------------------------------------------------------- site keys


def test_site_key_is_openssh_p384_and_pub_matches(fed: FederationCerts) -> None:
    priv_path, pub_path = fed.site_keys["site-0"]
    assert priv_path.name == "site-0.key" and pub_path.name == "site-0.pub"
    assert priv_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    priv = serialization.load_ssh_private_key(priv_path.read_bytes(), password=None)
    pub = serialization.load_ssh_public_key(pub_path.read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert isinstance(priv.curve, ec.SECP384R1)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert priv.public_key().public_numbers() == pub.public_numbers()
    assert check_site_key(priv_path).public_key().public_numbers() == pub.public_numbers()
    other = serialization.load_ssh_public_key(fed.site_keys["site-1"][1].read_bytes())
    assert other.public_numbers() != pub.public_numbers()


def test_flower_register_loader_accepts_pub_and_matches_node_key(fed: FederationCerts) -> None:
    """What ``flwr supernode register site.pub`` stores must equal what the node presents."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    priv_path, pub_path = fed.site_keys["site-1"]
    registered = try_load_public_key(pub_path)
    node_key = serialization.load_ssh_private_key(priv_path.read_bytes(), None)
    assert isinstance(node_key, ec.EllipticCurvePrivateKey)
    assert registered == public_key_to_bytes(node_key.public_key())

    # flower-supernode's own loader (private API: skip quietly if a later Flower renames it)
    from flwr.supernode.cli import flower_supernode

    setup = getattr(flower_supernode, "_try_setup_client_authentication", None)
    if setup is not None:
        ns = argparse.Namespace(
            auth_supernode_private_key=str(priv_path), auth_supernode_public_key=None
        )
        _, node_pub = setup(ns)
        assert public_key_to_bytes(node_pub) == registered


def test_flower_superexec_secret_loader(fed: FederationCerts) -> None:
    from flwr.supercore.auth import load_superexec_auth_secret

    raw = load_superexec_auth_secret(str(fed.superexec_secret))
    assert raw is not None and len(raw) == 64
    assert bytes.fromhex(raw.decode("ascii"))  # hex text, no trailing newline
    assert make_secret(fed.out_dir / "s2").read_bytes() != raw


def test_make_secret_keep_existing_creates_once(tmp_path: Path) -> None:
    """The create-if-missing variant a site's launcher uses: made 0600 in a 0700 folder, then
    never rewritten (the site's running SuperExec was started with it)."""
    folder = tmp_path / "site" / "work"
    old = os.umask(0)
    try:
        secret = make_secret(folder / "superexec.secret", keep_existing=True)
    finally:
        os.umask(old)
    assert _mode(secret) == 0o600 and _mode(folder) == 0o700
    content = secret.read_bytes()
    assert len(content) == 64 and bytes.fromhex(content.decode("ascii"))
    assert make_secret(secret, keep_existing=True) == secret
    assert secret.read_bytes() == content
    assert make_secret(secret).read_bytes() != content  # the default replaces it
    assert [p.name for p in folder.iterdir()] == ["superexec.secret"]  # no temp files left


def test_check_site_key_rejects_what_flower_refuses(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_path = tmp_path / "ed.key"
    ed_path.write_bytes(
        ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertError, match=r"ed\.key.*NIST curve"):
        check_site_key(ed_path)

    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem_path = tmp_path / "pem.key"
    pem_path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertError, match=r"pem\.key: not an OpenSSH private key"):
        check_site_key(pem_path)

    with pytest.raises(CertError, match=r"nope\.key: file not found"):
        check_site_key(tmp_path / "nope.key")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_check_site_key_rejects_passphrase(tmp_path: Path) -> None:
    """Flower loads the key with no passphrase, so a protected one must be refused up front.

    ssh-keygen makes it because cryptography needs the optional bcrypt module to encrypt.
    """
    locked = tmp_path / "locked.key"
    cmd = ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "pw", "-f", str(locked)]
    subprocess.run(cmd, check=True, capture_output=True)
    with pytest.raises(CertError, match=r"locked\.key: passphrase-protected"):
        check_site_key(locked)


# --------------------------------------------------------------------------- permissions


def test_private_files_0600_public_0644_dir_0700(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not leak into private files
    try:
        b = ensure_federation_certs(tmp_path / "a" / "gen", SANS, SITES)
    finally:
        os.umask(old)
    assert _mode(b.out_dir) == 0o700
    private = [b.ca_key, b.server_key, b.superexec_secret]
    private += [priv for priv, _ in b.site_keys.values()]
    public = [b.ca_cert, b.server_cert] + [pub for _, pub in b.site_keys.values()]
    for path in private:
        assert _mode(path) == 0o600, path
    for path in public:
        assert _mode(path) == 0o644, path
    leftovers = [p.name for p in b.out_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_overwrite_keeps_0600_even_if_file_was_loose(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_bytes(b"old")
    secret.chmod(0o666)
    make_secret(secret)
    assert _mode(secret) == 0o600
    priv, _ = make_site_key(tmp_path, "lab")
    priv.chmod(0o644)
    priv, _ = make_site_key(tmp_path, "lab")
    assert _mode(priv) == 0o600


# ------------------------------------------------------------------- ensure_federation_certs


def test_ensure_certs_is_idempotent(fed: FederationCerts) -> None:
    before = _snapshot(fed.out_dir)
    again = ensure_federation_certs(fed.out_dir, list(reversed(SANS)), SITES)
    assert _snapshot(fed.out_dir) == before
    assert set(again.actions.values()) == {"kept"}
    assert again.site_keys == fed.site_keys


def test_new_san_regenerates_server_cert_only(fed: FederationCerts) -> None:
    before = _snapshot(fed.out_dir)
    again = ensure_federation_certs(fed.out_dir, ["superlink", "10.1.2.3"], SITES)
    after = _snapshot(fed.out_dir)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"superlink.crt", "superlink.key"}
    # names only accumulate: the old ones stay so running nodes keep working
    assert set(again.sans) == {"localhost", "127.0.0.1", "superlink", "10.1.2.3"}
    verify_server_cert(again.ca_cert, again.server_cert, again.server_key)


def test_new_site_is_added_and_missing_pub_is_rebuilt(fed: FederationCerts) -> None:
    priv0, pub0 = fed.site_keys["site-0"]
    key_bytes, pub_bytes = priv0.read_bytes(), pub0.read_bytes()
    pub0.unlink()
    again = ensure_federation_certs(fed.out_dir, SANS, [*SITES, "lab-b"])
    assert priv0.read_bytes() == key_bytes  # a registered identity is never replaced
    assert pub0.read_bytes() == pub_bytes
    assert again.actions[pub0].startswith("regenerated")
    assert again.actions[again.site_keys["lab-b"][0]] == "created"


def test_force_regenerates_everything(fed: FederationCerts) -> None:
    before = _snapshot(fed.out_dir)
    again = ensure_federation_certs(fed.out_dir, ["localhost"], SITES, force=True)
    after = _snapshot(fed.out_dir)
    assert all(before[name] != after[name] for name in before)
    assert again.sans == ("localhost",)
    verify_server_cert(again.ca_cert, again.server_cert, again.server_key)


def test_ensure_certs_refuses_to_replace_broken_ca_or_site_key(fed: FederationCerts) -> None:
    out = fed.out_dir
    other_cert, other_key = make_ca(out / "other")
    os.replace(other_key, fed.ca_key)
    with pytest.raises(CertError, match=r"ca\.key does not match"):
        ensure_federation_certs(out, SANS, SITES)
    os.replace(other_cert, fed.ca_cert)
    fed.site_keys["site-1"][0].write_text("garbage")
    with pytest.raises(CertError, match=r"site-1\.key"):
        ensure_federation_certs(out, SANS, SITES)


def test_ensure_certs_reissues_server_cert_from_other_ca(fed: FederationCerts) -> None:
    make_ca(fed.out_dir)  # CA rotated by hand: old server cert no longer chains
    again = ensure_federation_certs(fed.out_dir, SANS, SITES)
    assert again.actions[again.server_cert].startswith("regenerated: server certificate")
    verify_server_cert(again.ca_cert, again.server_cert, again.server_key)


def test_ensure_certs_rejects_bad_names(tmp_path: Path) -> None:
    for sites in (["ca"], ["superlink"], ["a/b"], ["x", "x"]):
        with pytest.raises(CertError):
            ensure_federation_certs(tmp_path, SANS, sites)
    with pytest.raises(CertError):
        ensure_federation_certs(tmp_path, [], SITES)


# --------------------------------------------------------------------------- verify_server_cert


def test_verify_rejects_foreign_ca(fed: FederationCerts, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other")
    with pytest.raises(CertError, match=r"superlink\.crt is not signed by CA certificate .*other"):
        verify_server_cert(other_ca, fed.server_cert, fed.server_key)


def test_verify_rejects_mismatched_key(fed: FederationCerts, tmp_path: Path) -> None:
    _, other_key = make_server_cert(tmp_path / "x", fed.ca_cert, fed.ca_key, SANS)
    with pytest.raises(CertError, match=r"server key .*x/superlink\.key does not match"):
        verify_server_cert(fed.ca_cert, fed.server_cert, other_key)


def test_verify_rejects_expired_and_not_yet_valid(fed: FederationCerts, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    old, old_key = make_server_cert(
        tmp_path / "old", fed.ca_cert, fed.ca_key, SANS, days=1,
        not_before=now - dt.timedelta(days=3),
    )  # fmt: skip
    with pytest.raises(CertError, match=r"old/superlink\.crt: expired"):
        verify_server_cert(fed.ca_cert, old, old_key)
    new, new_key = make_server_cert(
        tmp_path / "new", fed.ca_cert, fed.ca_key, SANS, days=1,
        not_before=now + dt.timedelta(days=1),
    )  # fmt: skip
    with pytest.raises(CertError, match=r"new/superlink\.crt: not yet valid"):
        verify_server_cert(fed.ca_cert, new, new_key)
    # ensure_federation_certs heals an expired server cert without touching the CA
    ca_bytes = fed.ca_cert.read_bytes()
    os.replace(old, fed.server_cert)
    os.replace(old_key, fed.server_key)
    again = ensure_federation_certs(fed.out_dir, SANS, SITES)
    assert "expired" in again.actions[again.server_cert]
    assert fed.ca_cert.read_bytes() == ca_bytes
    verify_server_cert(again.ca_cert, again.server_cert, again.server_key)


def test_verify_names_missing_or_garbage_files(fed: FederationCerts, tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"missing\.crt: file not found"):
        verify_server_cert(fed.ca_cert, tmp_path / "missing.crt", fed.server_key)
    junk = tmp_path / "junk.crt"
    junk.write_text("not a cert")
    with pytest.raises(CertError, match=r"junk\.crt: not a PEM X\.509 certificate"):
        verify_server_cert(fed.ca_cert, junk, fed.server_key)
    with pytest.raises(CertError, match=r"server key .*ca\.crt: not a PEM private key"):
        verify_server_cert(fed.ca_cert, fed.server_cert, fed.ca_cert)
    with pytest.raises(CertError, match=r"superlink\.crt: not a CA"):
        check_ca(fed.server_cert)
    assert issubclass(CertError, ValueError)


# --------------------------------------------------------------------------- CLI


def test_zk0_parser_registers_every_command_from_the_table() -> None:
    import importlib

    from deploy.cli import COMMANDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.name for c in COMMANDS]
    for command in COMMANDS:
        handler = sub.choices[command.name].get_default("func")  # some need positionals
        assert handler is importlib.import_module(command.module).run_cli, command.name


def test_cli_defaults() -> None:
    args = build_parser().parse_args(["certs"])
    assert args.out == Path("certs/generated")
    assert args.func is run_cli and not args.force
    with pytest.raises(SystemExit):
        build_parser().parse_args(["certs", "--sites", "2", "--site", "a"])


def test_run_cli_makes_then_keeps_and_never_prints_keys(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    args = build_parser().parse_args(["certs", "--out", str(out), "--san", "superlink"])
    assert run_cli(args) == 0
    first = capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir() if p.name != ".lock")
    expected = ["ca.crt", "ca.key", "superexec.secret", "superlink.crt", "superlink.key",
                "coordinator.key", "coordinator.pub"]
    expected += [f"site-{i}.{ext}" for i in range(4) for ext in ("key", "pub")]
    assert names == sorted(expected)
    assert "created" in first and str(out / "site-3.pub") in first
    cert = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    assert set(cert_sans(cert)) == {"localhost", "127.0.0.1", "superlink"}

    args = build_parser().parse_args(["certs", "--out", str(out), "--site", "site-0"])
    assert run_cli(args) == 0
    second = capsys.readouterr().out
    assert "created" not in second and "regenerated" not in second
    assert "kept" in second
    for text in (first, second):
        assert "PRIVATE KEY" not in text
        assert (out / "superexec.secret").read_text() not in text
        for key in out.glob("*.key"):
            body = key.read_text().splitlines()[1]
            assert body not in text


def test_run_cli_reports_errors(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(["certs", "--out", str(tmp_path), "--san", "bad name"])
    assert run_cli(args) == 1
    assert "bad name" in capsys.readouterr().err
