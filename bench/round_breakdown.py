"""Where a federated round's seconds go, from the timestamps each process records.

Three records of every message, in three kinds of process (one machine, one clock):

- the ServerApp's round report (``rounds/round_NNN.json``, ``timing``): the round started, its
  instructions were encoded and signed, pushed to the SuperLink, each site's reply pulled,
  aggregated, checkpointed (:mod:`superlink.federation`);
- the site's SuperNode log (:mod:`deploy.flower.supernode_waits`): the pull that brought the
  message started, the message was stored; the reply's upload started and ended;
- the site worker's log (:mod:`supernode.worker`, :mod:`supernode.tasks`): the task was
  acquired, its input pulled, the ClientApp returned, the reply pushed; inside the handler,
  decode, model setup, evaluation, training and encoding.

A round is the chain of its last site's message (the one the aggregation waited for), cut at
each timestamp, so the stages add up to the round's period (start to the next round's start)
exactly; the one part no timestamp covers is inside the ClientApp call: what is left of it after
the handler's own measurements (signature check and signing, packing, reply records), reported
as the residue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = (
    ("configure", "ServerApp: encode + sign the instructions"),
    ("send", "ServerApp send: pack + push to the SuperLink"),
    ("to_supernode", "SuperLink to SuperNode (the pull's wait + download)"),
    ("executor_start", "executor start (task acquired, input pulled from the SuperNode)"),
    ("decode", "decode (verify digests, cast)"),
    ("setup", "model setup (weights and norm stats into the kept policy)"),
    ("evaluate", "evaluate (held-out MSE, trajectory)"),
    ("train", "train (local steps)"),
    ("encode", "encode (update, digests)"),
    ("residue", "residue: rest of the ClientApp call (signatures, packing, records)"),
    ("to_supernode_reply", "reply to the SuperNode (push)"),
    ("to_superlink", "SuperNode to SuperLink (upload)"),
    ("pull", "ServerApp pull (poll wait + download + unpack)"),
    ("aggregate", "aggregate"),
    ("checkpoint", "checkpoint (LeRobot policy + server state)"),
    ("report", "report, summary page, next round's start"),
)
_KV = re.compile(r"(\w+)=(\S+)")
_SUPERNODE = re.compile(r"zk0 (message stored|reply sent) (\{.*\})")


def _fields(line: str) -> dict[str, str]:
    return dict(_KV.findall(line))


@dataclass
class SiteLogs:
    """One site's records of each message, by the instruction's message id."""

    stored: dict[str, dict[str, Any]]  # SuperNode: pull_started, received, stored
    sent: dict[str, dict[str, Any]]  # SuperNode: send_started, sent (by the id replied to)
    tasks: dict[str, dict[str, str]]  # worker: task_done fields (its stamps)
    trained: dict[int, dict[str, str]]  # worker: the handler's stages of each round's train
    train_ids: dict[int, str]  # round -> the id of its train message

    @classmethod
    def read(cls, supernode_log: Path, worker_log: Path) -> SiteLogs:
        stored: dict[str, dict[str, Any]] = {}
        sent: dict[str, dict[str, Any]] = {}
        for line in supernode_log.read_text(errors="replace").splitlines():
            if match := _SUPERNODE.search(line):
                values = json.loads(match.group(2))
                if match.group(1) == "message stored":
                    stored[values["message_id"]] = values
                else:
                    sent[values["reply_to"]] = values
        tasks: dict[str, dict[str, str]] = {}
        trained: dict[int, dict[str, str]] = {}
        train_ids: dict[int, str] = {}
        current = ""  # the worker runs one message at a time: started, trained, done
        for line in worker_log.read_text(errors="replace").splitlines():
            if " task_started " in line:
                current = _fields(line).get("message_id", "")
            elif " trained " in line:
                values = _fields(line)
                trained[int(values["round"])] = values
                train_ids[int(values["round"])] = current
            elif " task_done " in line:
                values = _fields(line)
                tasks[values.get("message_id", "")] = values
        return cls(stored, sent, tasks, trained, train_ids)


def round_stages(entry: dict[str, Any], next_started: float, site: str,
                 logs: SiteLogs) -> dict[str, float] | None:
    """The stages of ``site``'s message in one round (seconds, in :data:`STAGES` order);
    None when a record is missing (that round is not counted)."""
    timing = entry.get("timing") or {}
    r = entry["round"]
    if site not in timing.get("replies", {}) or r not in logs.trained:
        return None
    message_id = logs.train_ids.get(r, "")
    if not all(message_id in d for d in (logs.stored, logs.sent, logs.tasks)):
        return None
    node, task, up = logs.stored[message_id], logs.tasks[message_id], logs.sent[message_id]
    trained = {k: float(v) for k, v in logs.trained[r].items()
               if k.endswith("_seconds") and k != "seconds"}
    acquired_input = float(task["input_at"])
    handled = float(task["handled_at"])
    pushed = float(task["pushed_at"])
    handler = (trained["setup_seconds"] + trained["eval_seconds"] + trained["train_seconds"]
               + trained["encode_seconds"])
    last_reply = max(timing["replies"].values())
    stages = {
        "configure": timing["configured"] - timing["started"],
        "send": timing["pushed"] - timing["configured"],
        "to_supernode": node["stored"] - timing["pushed"],
        "executor_start": acquired_input - node["stored"],
        "decode": trained["decode_seconds"],
        "setup": trained["setup_seconds"] - trained["decode_seconds"],
        "evaluate": trained["eval_seconds"],
        "train": trained["train_seconds"],
        "encode": trained["encode_seconds"],
        "residue": (handled - acquired_input) - handler,
        "to_supernode_reply": pushed - handled,
        "to_superlink": up["sent"] - pushed,
        "pull": timing["replies"][site] - up["sent"],
        "aggregate": timing["aggregated"] - last_reply,
        "checkpoint": timing.get("checkpointed", timing["aggregated"]) - timing["aggregated"],
        "report": next_started - timing.get("checkpointed", timing["aggregated"]),
    }
    stages["period"] = next_started - timing["started"]
    stages["pull_wait_before_stored"] = max(0.0, node["pull_started"] - timing["pushed"])
    return stages


def cluster_logs(logs_dir: Path, sites: list[str]) -> dict[str, tuple[Path, Path]]:
    """Each site's SuperNode and worker logs as :class:`deploy.cluster.local_cluster.
    LocalCluster` names them."""
    return {s: (logs_dir / f"supernode-{s}.log", logs_dir / f"worker-{s}.log") for s in sites}


def breakdown(run_dir: Path, site_logs: dict[str, tuple[Path, Path]],
              first_round: int = 2) -> list[dict[str, Any]]:
    """Per measured round (from ``first_round``; round 1 also evaluates the initial model and
    builds the policy): the critical site's stages. A round is measured up to the next round's
    start, so the last round is not. ``site_logs``: each site's (SuperNode log, worker log)."""
    rounds = {json.loads(p.read_text())["round"]: json.loads(p.read_text())
              for p in sorted((run_dir / "rounds").glob("round_*.json"))}
    logs = {s: SiteLogs.read(node, worker) for s, (node, worker) in site_logs.items()}
    out = []
    for r in sorted(rounds):
        if r < first_round or r + 1 not in rounds:
            continue
        entry, following = rounds[r], rounds[r + 1]
        replies = (entry.get("timing") or {}).get("replies") or {}
        if not replies or "timing" not in following or not set(replies) <= set(logs):
            continue
        last = max(replies, key=replies.get)
        stages = round_stages(entry, following["timing"]["started"], last, logs[last])
        if stages is not None:
            out.append({"round": r, "site": last, **stages})
    return out


def mean_stages(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each stage (and of the period) over the measured rounds."""
    keys = [k for k, _ in STAGES] + ["period", "pull_wait_before_stored"]
    return {k: sum(row[k] for row in rows) / len(rows) for k in keys} if rows else {}
