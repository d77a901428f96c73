"""Certificate and key tooling for a zk0 federation (see ``certs/README.md``).

``x509``: CA and TLS server certificates. ``keys``: EC keys, site keys, secrets. ``checks``:
what Flower would refuse, found before start. ``federation``: the whole set of files, made
once and kept. ``names``: host and site names. ``files``: private/public file writes and reads.
``cli``: ``zk0 certs``.
"""

from certs.checks import check_ca, check_site_key, load_ca, verify_server_cert
from certs.errors import CertError
from certs.federation import (
    DEFAULT_OUT,
    DEFAULT_SANS,
    FederationCerts,
    ensure_federation_certs,
    ensure_site_key,
)
from certs.keys import make_secret, make_site_key
from certs.names import is_host_name
from certs.x509 import (
    build_ca,
    build_server_cert,
    cert_sans,
    make_ca,
    make_server_cert,
    missing_sans,
    parse_san,
)

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_SANS",
    "CertError",
    "FederationCerts",
    "build_ca",
    "build_server_cert",
    "cert_sans",
    "check_ca",
    "check_site_key",
    "ensure_federation_certs",
    "ensure_site_key",
    "is_host_name",
    "load_ca",
    "make_ca",
    "make_secret",
    "make_server_cert",
    "make_site_key",
    "missing_sans",
    "parse_san",
    "verify_server_cert",
]
