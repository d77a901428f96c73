"""Which host and site names zk0 accepts, in one place for certificates and addresses.

A host name goes into the SuperLink certificate's SANs (``zk0 certs --san``) and into the
address a site dials (``zk0 supernode --superlink``); both must agree on what a name is, or a
name accepted for the certificate could be refused for dialling (or the reverse).
"""

from __future__ import annotations

import re

from certs.errors import CertError

# DNS labels of 1-63 characters, dot-separated, optional trailing dot (fully qualified).
# Underscores are allowed because compose service names (which containers dial) may contain them.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_HOST_LENGTH = 253
HOST_RULE = "letters, digits, '-', '_' and dots"


def is_host_name(text: str, *, wildcard: bool = False) -> bool:
    """True if ``text`` is a DNS host name (not an IP check: test IPs first).

    ``wildcard`` also accepts one leading ``*.`` label, which only a certificate SAN may have.
    """
    if wildcard and text.startswith("*."):
        text = text[2:]
    return 0 < len(text) <= MAX_HOST_LENGTH and _HOST_RE.match(text) is not None


def check_site_name(site_name: str) -> None:
    """Refuse a site name that cannot be a file name stem (``<site>.key``) and a node name."""
    if not _SITE_RE.match(site_name):
        raise CertError(
            f"site name {site_name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
