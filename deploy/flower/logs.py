"""What only Flower's log lines say, read from the logs of processes we started.

Flower 1.42 offers no other channel for these facts, so they are scraped here and nowhere
else (everything the ``flwr`` CLI can give as ``--format json`` comes from
:mod:`deploy.flower.flwr_cli`):

* a SuperNode's own exit reason: ``flwr_exit`` logs "Exit Code: 305" but calls ``sys.exit(1)``
  for every error code, so the process's exit status cannot tell a refused key (305) from any
  other failure;
* a SuperNode's node id as seen by the site: a lab has no access to the Control API (only the
  operator runs ``flwr``), and even there ``flwr supernode list --format json`` lists neither
  names nor public keys, so the id of an already registered key (a restart) is only in the
  SuperNode's "SuperNode ID: N" line.
"""

from __future__ import annotations

import re

from deploy.flower.processes import ManagedProcess

#: Flower exit code of a SuperNode refused by the SuperLink (unregistered key, no key while
#: auth is on, TLS verification failed).
EXIT_SUPERNODE_CONNECTION_ERROR = 305
#: SuperNode started with ``--insecure`` and a key.
EXIT_SUPERNODE_INSECURE_WITH_KEY = 303

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (Flower colours its log lines)."""
    return _ANSI.sub("", text)


def flower_exit_code(proc: ManagedProcess) -> int | None:
    """Flower's own exit code (e.g. 305) of a process that has exited, else None.

    Falls back to the process's exit status when no code was logged (e.g. killed by a signal).
    """
    if proc.returncode is None:
        return None
    codes = _EXIT_CODE.findall(strip_ansi(proc.log_tail(200)))
    return int(codes[-1]) if codes else proc.returncode


def logged_node_id(proc: ManagedProcess, since: int = 0) -> int | None:
    """The node id a SuperNode logs once the SuperLink accepted it ("SuperNode ID: N"), in
    its log from byte ``since`` on (a restarted process appends to the same log)."""
    match = _NODE_ID.search(proc.log_text(since))
    return int(match.group(1)) if match else None
