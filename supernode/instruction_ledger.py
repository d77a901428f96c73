"""Every instruction is handled once: a site refuses a replayed instruction, or an older one.

The coordinator's signature (:mod:`common.signing`) proves who wrote an instruction and for
whom, not that it is new: whoever holds the labs' entry (where TLS ends) could capture a signed
instruction and deliver it again, and the site would retrain an old round (and, with SCAFFOLD,
drop the control variate it keeps pending for the server). So each instruction carries, signed,
the federation it belongs to and the coordinator's sequence number
(:class:`superlink.authenticity.InstructionSequence`), and this ledger remembers per federation
(and per node id: a state folder shared by two nodes keeps their numbers apart) the highest
number the site has handled, with the run, round and kind it came with. An
instruction whose number is not above it is refused before anything acts on it, with a log line
and an error reply naming both instructions.

Why a sequence number and not the order of (run, round, kind): Flower run ids are random, so two
runs have no order; and when an interrupted federation is resumed (:mod:`superlink.resume`: same
federation id, a new Flower run id) the new run legitimately sends again the round after the
last completed one, which this site may already have trained for the interrupted run (its
aggregation never happened). Ordering by round would refuse that resend; ordering by run id
cannot be done. The coordinator's number grows across the whole federation, resumed runs
included, so the resend carries a number above everything the site handled and passes, while
a captured copy of any earlier instruction, from this run or an earlier one, keeps its old
number and is refused. An instruction captured on its way to another site fails earlier, at
the signature: it is signed for that site's node id.

The ledger is ``<state root>/instructions.json`` (``state-dir``, else
``$ZK0_CACHE/sites/<site>``): ``{federation: {node id: last instruction}}``, mode 0600, written
atomically (:mod:`common.atomic`) under an exclusive lock, so concurrent ClientApps of one site
cannot both accept the same instruction.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import atomic

LEDGER_FILE = "instructions.json"
LOCK_FILE = ".instructions.lock"


class InstructionReplayed(RuntimeError):
    """An instruction whose sequence number is not above the last one handled."""


class LedgerUnreadable(RuntimeError):
    """The ledger file exists but cannot be read: the site refuses instructions until fixed."""


@dataclass(frozen=True)
class Handled:
    """One instruction as the ledger records it."""

    sequence: int
    run_id: int
    round: int
    kind: str

    def describe(self) -> str:
        return f"#{self.sequence} ({self.kind}, round {self.round}, run {self.run_id})"

    @classmethod
    def from_entry(cls, entry: dict) -> Handled:
        return cls(int(entry["sequence"]), int(entry["run_id"]), int(entry["round"]),
                   str(entry["kind"]))


class InstructionLedger:
    """The highest instruction a site has handled, per federation (module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LEDGER_FILE

    def _read(self) -> dict[str, dict[str, dict]]:
        if not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())
            if not isinstance(entries, dict):
                raise ValueError("not a JSON object")
            for nodes in entries.values():
                for value in nodes.values():
                    Handled.from_entry(value)
            return entries
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise LedgerUnreadable(
                f"{self.path}: unreadable instruction ledger ({type(err).__name__}: {err}); it "
                "is written atomically, so it was changed by hand or the disk is damaged. The "
                "site refuses every instruction until it is fixed; removing it lets instructions "
                "this site already handled be replayed once more"
            ) from None

    def last(self, federation: str, node_id: int) -> Handled | None:
        entry = self._read().get(federation, {}).get(str(node_id))
        return None if entry is None else Handled.from_entry(entry)

    def admit(self, federation: str, node_id: int, instruction: Handled) -> None:
        """Record ``instruction`` as handled by ``node_id``, or raise
        :class:`InstructionReplayed` if its number is not above the last one that node handled
        for ``federation``."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic.locked(self.root / LOCK_FILE):
            entries = self._read()
            nodes = entries.setdefault(federation, {})
            if str(node_id) in nodes:
                last = Handled.from_entry(nodes[str(node_id)])
                if instruction.sequence <= last.sequence:
                    raise InstructionReplayed(
                        f"instruction {instruction.describe()} of federation {federation!r} is "
                        f"not newer than {last.describe()}, the last one this site handled: a "
                        "replayed or out-of-date instruction; nothing was done"
                    )
            nodes[str(node_id)] = {**asdict(instruction), "handled_at": time.time()}
            atomic.write_bytes(self.path, (json.dumps(entries, indent=1) + "\n").encode(), 0o600)
