"""bench/round_breakdown.py: a round's stages come from the three processes' records, follow the
critical site's message, and add up to the round's period exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.round_breakdown import STAGES, breakdown, cluster_logs, mean_stages

T0 = 1_800_000_000.0


def _round(r: int, start: float, replies: dict[str, float]) -> dict:
    last = max(replies.values())
    return {"round": r, "sites": {}, "timing": {
        "started": start, "configured": start + 0.05, "pushed": start + 0.10,
        "replies": replies, "aggregated": last + 0.02, "checkpointed": last + 0.10}}


def _site(logs: Path, site: str, rounds: dict[int, float]) -> None:
    """A SuperNode log and a worker log with one train message per round, starting at t."""
    node, worker = [], []
    for r, t in rounds.items():
        mid = f"m{r}{site}"
        stored = {"message_id": mid, "message_type": "train", "pull_started": t + 0.11,
                  "received": t + 0.12, "run_id": 1, "stored": t + 0.20}
        sent = {"reply_to": mid, "error": False, "message_type": "train",
                "send_started": t + 1.51, "sent": t + 1.60}
        node.append(f"INFO :      zk0 message stored {json.dumps(stored)}")
        node.append(f"INFO :      zk0 reply sent {json.dumps(sent)}")
        worker += [
            f"2026-01-01T00:00:00Z [info     ] task_started   message_id={mid} run_id=1",
            f"2026-01-01T00:00:00Z [info     ] trained   decode_seconds=0.01 encode_seconds=0.02"
            f" eval_seconds=0.0 round={r} setup_seconds=0.05 site={site} train_seconds=1.0",
            f"2026-01-01T00:00:00Z [info     ] task_done   acquired_at={t + 0.21:.6f} "
            f"done_at={t + 1.56:.6f} handled_at={t + 1.50:.6f} input_at={t + 0.25:.6f} "
            f"message_id={mid} message_type=train pushed_at={t + 1.55:.6f} status=completed",
        ]
    (logs / f"supernode-{site}.log").write_text("\n".join(node) + "\n")
    (logs / f"worker-{site}.log").write_text("\n".join(worker) + "\n")


def test_stages_follow_the_last_reply_and_add_up_to_the_period(tmp_path: Path) -> None:
    run, logs = tmp_path / "run", tmp_path / "logs"
    (run / "rounds").mkdir(parents=True)
    logs.mkdir()
    starts = {1: T0, 2: T0 + 10, 3: T0 + 20}
    # site-b's reply arrives last in round 2: its message is the round's critical path
    replies = {2: {"site-a": starts[2] + 1.9, "site-b": starts[2] + 2.4}}
    for r, start in starts.items():
        entry = _round(r, start, replies.get(r, {"site-a": start + 1.9, "site-b": start + 2.0}))
        (run / "rounds" / f"round_{r:03d}.json").write_text(json.dumps(entry))
    _site(logs, "site-a", starts)
    _site(logs, "site-b", starts)
    rows = breakdown(run, cluster_logs(logs, ["site-a", "site-b"]))
    assert [r["round"] for r in rows] == [2]  # round 1 builds the policy; round 3 is the last
    [row] = rows
    assert row["site"] == "site-b"
    assert sum(row[k] for k, _ in STAGES) == pytest.approx(row["period"], abs=1e-5)
    assert row["period"] == pytest.approx(10.0, abs=1e-5)
    assert row["to_supernode"] == pytest.approx(0.10, abs=1e-5)  # pushed at +0.10, stored at +0.20
    assert row["executor_start"] == pytest.approx(0.05, abs=1e-5)
    assert row["train"] == 1.0 and row["decode"] == 0.01
    assert row["setup"] == pytest.approx(0.04, abs=1e-5)
    # the ClientApp call took 1.25 s, the handler measured 1.07 s of it
    assert row["residue"] == pytest.approx(0.18, abs=1e-5)
    assert row["to_superlink"] == pytest.approx(0.05, abs=1e-5)  # pushed at +1.55, sent at +1.60
    assert row["pull"] == pytest.approx(0.80, abs=1e-5)  # sent at +1.60, pulled at +2.40
    assert row["report"] == pytest.approx(10.0 - 2.5, abs=1e-5)
    assert mean_stages(rows)["period"] == pytest.approx(10.0, abs=1e-5)


def test_a_round_with_a_record_missing_is_not_counted(tmp_path: Path) -> None:
    run, logs = tmp_path / "run", tmp_path / "logs"
    (run / "rounds").mkdir(parents=True)
    logs.mkdir()
    starts = {1: T0, 2: T0 + 10, 3: T0 + 20}
    for r, start in starts.items():
        (run / "rounds" / f"round_{r:03d}.json").write_text(
            json.dumps(_round(r, start, {"site-a": start + 2.0})))
    _site(logs, "site-a", {1: T0, 3: T0 + 20})  # round 2's message never reached the logs
    assert breakdown(run, cluster_logs(logs, ["site-a"])) == []
    assert mean_stages([]) == {}
