"""Continue an interrupted run from its run folder (``resume-from = "runs/run-123"``).

Flower does not resume runs: a ServerApp killed, or a SuperLink restarted without process
isolation, ends the run ``finished:failed``. zk0 keeps what it needs in the run folder instead,
written atomically as each round completes, and a new ``flwr run`` with ``resume-from`` picks
it up:

- the last complete checkpoint (one with ``zk0_server_state.safetensors``) gives the global
  weights exactly as the next round would send them, the strategy's state (FedAvgM's momentum,
  FedAdam's moments, ...) and the normalization stats of stage 0;
- ``run.json`` gives the features the federation agreed on, the rounds that failed after that
  checkpoint (they count, and count towards ``max-failed-rounds``), and the federation id;
- ``rounds/round_NNN.json`` (or the copy inside the checkpoint, if the ServerApp stopped
  between the two writes) and ``initial_eval`` give the reports and the eval history.

The resumed run continues in the same folder with round ``completed_round + 1``: no completed
round is repeated or lost, the learning-rate schedule (a function of the round number and
``num-server-rounds``) goes on where it was, and sites find their AdamW moments again because
the federation id (the first run's id) is what they key them by, not Flower's new run id.
Whatever shapes the training must be the same as when the run started; only the keys in
:data:`MAY_CHANGE` may differ (anything else is refused, naming each key).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import RunConfig, SettingsError
from superlink import server_state
from superlink.checkpoints import ROUND_FILE, latest_checkpoint
from superlink.run_status import RoundLedger

#: Run-config keys a resumed run may change: how long to wait, how strict to be, where to
#: keep checkpoints. Every other key shapes the training and must stay as it was.
MAY_CHANGE = frozenset({
    "resume-from", "round-timeout", "join-timeout", "min-sites", "min-replies",
    "max-failed-rounds", "max-update-norm-ratio", "max-weight-ratio", "keep-checkpoints",
    "output-dir", "upload-stall-timeout",
})


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    meta: dict[str, Any]  # run.json as the interrupted run left it
    completed_round: int  # the last round whose outcome is on disk; resume with the next
    state: server_state.ServerState | None  # None: no round moved the model yet
    ledger: RoundLedger
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def federation_id(self) -> str:
        return str(self.meta.get("federation_id") or self.meta["run_id"])

    @property
    def features(self) -> dict[str, Any]:
        return self.meta["features"]

    @property
    def fps(self) -> float | None:
        """The fps the federation agreed on (None: a run from before fps was compared)."""
        return self.meta.get("fps")


def run_folder(run: RunConfig, run_id: int) -> Path:
    """The run's folder: ``resume-from``, or a new ``<output-dir>/run-<run id>``."""
    if run.resume_from:
        return Path(run.resume_from).expanduser().resolve()
    return (Path(run.output_dir).expanduser() / f"run-{run_id}").resolve()


def check_same_training(saved: dict[str, Any], run: RunConfig) -> None:
    """Refuse to resume with a run config that trains differently, naming every key."""
    now = run.to_flwr()
    changed = [
        f"'{key}' was {saved[key]!r}, now {now[key]!r}"
        for key in sorted(set(saved) & set(now) - MAY_CHANGE)
        if saved[key] != now[key]
    ]
    if changed:
        raise SettingsError(
            f"run config: key 'resume-from': the run config differs from the run it resumes: "
            f"{'; '.join(changed)}. Resume with the same values (only {sorted(MAY_CHANGE)} "
            "may change), or start a new run"
        )


def load(run_dir: Path, run: RunConfig) -> ResumePoint:
    """What the interrupted run in ``run_dir`` completed, checked against ``run``."""
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise SettingsError(
            f"run config: key 'resume-from': {run_dir} holds no run.json: not a zk0 run folder"
        )
    meta = json.loads(meta_path.read_text())
    if "features" not in meta:
        raise SettingsError(
            f"run config: key 'resume-from': {run_dir} stopped before its sites agreed on "
            "features (stage 0); start a new run"
        )
    if str(meta.get("status", "")).startswith("completed"):
        raise SettingsError(
            f"run config: key 'resume-from': {run_dir} already {meta['status']}; nothing to "
            "resume (start a new run to train further)"
        )
    check_same_training(meta.get("run_config", {}), run)
    latest = latest_checkpoint(run_dir)
    checkpoint_round, state = 0, None
    if latest is not None:
        checkpoint_round = latest[0]
        state = server_state.read(latest[1] / server_state.STATE_FILE)
    failed = sorted(int(r) for r in meta.get("failed_rounds", []))
    completed = checkpoint_round
    while completed + 1 in failed:
        completed += 1
    failed = [r for r in failed if r <= completed]
    ledger = RoundLedger(
        run.max_failed_rounds,
        failed_rounds=failed,
        moved_rounds=checkpoint_round - sum(r <= checkpoint_round for r in failed),
        consecutive_failed=completed - checkpoint_round,
    )
    rounds = _round_reports(run_dir, completed, latest[1] if latest else None)
    evals = {r: e["eval"] for r, e in rounds.items() if e.get("eval")}
    if meta.get("initial_eval"):
        evals[0] = meta["initial_eval"]
    _discard_after(run_dir, completed)
    return ResumePoint(run_dir, meta, completed, state, ledger, rounds, evals)


def _round_reports(run_dir: Path, upto: int, checkpoint: Path | None) -> dict[int, dict]:
    rounds = {}
    for r in range(1, upto + 1):
        path = run_dir / "rounds" / f"round_{r:03d}.json"
        if path.is_file():
            rounds[r] = json.loads(path.read_text())
        elif checkpoint is not None and checkpoint.name == f"{r:06d}":
            # stopped between writing the checkpoint and its round report
            rounds[r] = json.loads((checkpoint / ROUND_FILE).read_text())["report"]
    return rounds


def _discard_after(run_dir: Path, completed: int) -> None:
    """Remove what an unfinished round left: its report and half-written checkpoint folders."""
    for path in (run_dir / "rounds").glob("round_*.json"):
        digits = path.stem.removeprefix("round_")
        if digits.isdigit() and int(digits) > completed:
            path.unlink()
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            if path.name.startswith(".") and path.is_dir():  # atomic.write_dir's temp folders
                shutil.rmtree(path, ignore_errors=True)
