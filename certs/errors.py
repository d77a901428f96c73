"""The one error every ``certs`` check raises, so callers catch a single type."""

from __future__ import annotations


class CertError(ValueError):
    """A certificate, key or secret file is missing, malformed or does not fit the others.

    The message names the file (or value) at fault and what was expected; it never contains
    key material.
    """
