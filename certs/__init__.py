"""Certificate and key tooling for a zk0 federation (see ``certs/README.md``)."""

from certs.make import (
    DEFAULT_OUT,
    DEFAULT_SANS,
    CertBundle,
    CertError,
    add_cli,
    cert_sans,
    check_ca,
    check_site_key,
    ensure_bundle,
    make_ca,
    make_secret,
    make_server_cert,
    make_site_key,
    parse_san,
    run_cli,
    verify_server_cert,
)

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_SANS",
    "CertBundle",
    "CertError",
    "add_cli",
    "cert_sans",
    "check_ca",
    "check_site_key",
    "ensure_bundle",
    "make_ca",
    "make_secret",
    "make_server_cert",
    "make_site_key",
    "parse_san",
    "run_cli",
    "verify_server_cert",
]
