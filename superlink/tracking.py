"""Experiment tracking with Weights & Biases, from the SuperLink (run config ``tracking``).

LeRobot's own training logs to W&B, so labs already compare runs there. The SuperLink has every
number of a federated run (per-site loss and held-out MSE, bytes, failures, plots), so it
alone logs, into one W&B run per federated run; sites need no W&B account.

- Off unless ``tracking = "wandb"``; ``wandb`` is the optional extra ``zk0[tracking]``.
- The API key comes only from the environment of the process running the ServerApp
  (``WANDB_API_KEY``; wandb reads it itself): it is never in the run config, a log or a file
  zk0 writes. ``WANDB_MODE=offline`` logs into ``<run>/wandb/`` only (``wandb sync`` uploads).
- Step = round: round ``r``'s training and the evaluation of the model *after* round ``r`` share
  step ``r`` (the evaluation arrives one round later, before round ``r + 1`` is logged).
- A W&B failure mid-run is logged once and tracking stops; the federation goes on.
- W&B's system metadata is off (``x_disable_meta``): it records the process's command line,
  and Flower starts the ServerApp with its run token as an argument. W&B's own crash reports
  (Sentry) are off unless ``WANDB_ERROR_REPORTING`` says otherwise; no system-metric sampling,
  no console capture (the ServerApp's output is Flower's log stream).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.logs import get_logger
from common.settings import RunConfig, SettingsError

log = get_logger("zk0.superlink")

OFFLINE_MODES = ("offline", "disabled", "dryrun")


class Tracker:
    """No-op unless a W&B run was opened (see :func:`open_tracker`)."""

    def __init__(self, wandb_module: Any = None, run: Any = None) -> None:
        self._wandb = wandb_module
        self._run = run
        self._step = 0  # W&B steps must not go back: the latest one logged

    @property
    def active(self) -> bool:
        return self._run is not None

    def _safe(self, what: str, fn, *args, **kwargs) -> None:
        if self._run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # W&B down or full disk: the federation matters more
            log.warning("tracking_failed", what=what, error=f"{type(err).__name__}: {err}"[:300])
            self._run = None

    def update_config(self, values: Mapping[str, Any]) -> None:
        self._safe("config", lambda: self._run.config.update(dict(values),
                                                             allow_val_change=True))

    def log_round(self, entry: Mapping[str, Any]) -> None:
        """Round ``r``'s training: loss per site and weighted, bytes, seconds, failures."""
        sites = entry.get("sites", {})
        values: dict[str, Any] = {
            "round": entry["round"],
            "train/loss": entry.get("train_loss"),
            "train/samples": entry.get("samples"),
            "bytes/uplink": entry.get("uplink_bytes"),
            "bytes/downlink": entry.get("downlink_bytes"),
            "round/seconds": entry.get("seconds"),
            "sites/ok": len(sites),
            "sites/failed": len(entry.get("failures", [])),
        }
        for site, report in sites.items():
            values[f"train/loss/{site}"] = report["train_loss"]
            values[f"bytes/uplink/{site}"] = report["payload_bytes"]
            values[f"seconds/{site}"] = report["train_seconds"]
        for failure in entry.get("failures", []):
            values[f"failed/{failure['site']}"] = failure["kind"]
        self._log(values, entry["round"])

    def log_eval(self, entry: Mapping[str, Any], run_dir: Path) -> None:
        """Held-out MSE of the model after a round, per site and weighted, and its plots."""
        after = entry["after_round"]
        values: dict[str, Any] = {
            "round": after,
            "eval/mse": entry["action_mse_weighted"],
            "eval/mse_mean": entry["action_mse_mean"],
        }
        for site, mse in entry["action_mse"].items():
            values[f"eval/mse/{site}"] = mse
        for site, traj in entry.get("trajectories", {}).items():
            if self._wandb is not None:
                values[f"trajectory/{site}"] = self._wandb.Image(
                    str(run_dir / traj["plot"]),
                    caption=f"{site}, model after round {after}, episode {traj['episode']}",
                )
            for joint, mse in traj["mse_per_joint"].items():
                values[f"trajectory_mse/{site}/{joint}"] = mse
        self._log(values, after)

    def _log(self, values: dict[str, Any], step: int) -> None:
        clean = {k: v for k, v in values.items() if v is not None}
        self._step = max(self._step, step)
        self._safe("log", lambda: self._run.log(clean, step=self._step))

    def finish(self, summary: Mapping[str, Any], failures: list[dict[str, Any]],
               exit_code: int = 0) -> None:
        """The run's failures as a table, its summary numbers, then close the W&B run."""
        def table() -> None:
            rows = self._wandb.Table(columns=["round", "site", "kind", "reason"])
            for f in failures:
                rows.add_data(str(f.get("round")), f["site"], f["kind"], f["reason"][:500])
            self._run.log({"failures": rows}, step=self._step)

        def numbers() -> None:
            for key, value in summary.items():
                self._run.summary[key] = value

        if failures and self._wandb is not None:
            self._safe("failures", table)
        self._safe("summary", numbers)
        self._safe("finish", lambda: self._run.finish(exit_code=exit_code))
        self._run = None


def open_tracker(run: RunConfig, run_dir: Path, run_id: int,
                 config: Mapping[str, Any]) -> Tracker:
    """A W&B run for this federated run, or a no-op tracker when ``tracking = "none"``.

    Fails with :class:`SettingsError` before any work when W&B is asked for but cannot work.
    """
    if run.tracking == "none":
        return Tracker()
    try:
        import wandb
    except ImportError:
        raise SettingsError(
            "run config: key 'tracking': 'wandb' needs the wandb package on the SuperLink "
            "host (pip install 'zk0[tracking]')"
        ) from None
    mode = os.environ.get("WANDB_MODE", "online")
    if mode not in OFFLINE_MODES and not os.environ.get("WANDB_API_KEY"):
        raise SettingsError(
            "run config: key 'tracking': 'wandb' online needs WANDB_API_KEY in the environment "
            "of the process running the ServerApp (flower-superexec), or WANDB_MODE=offline"
        )
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    wandb_run = wandb.init(
        project=run.wandb_project,
        entity=run.wandb_entity or None,
        name=run_dir.name,
        id=f"zk0-{run_id}",
        dir=str(run_dir),
        config=dict(config),
        tags=["zk0", "federated", run.policy, run.strategy],
        resume="allow",
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                x_disable_meta=True, save_code=False),
    )
    log.info("tracking_started", backend="wandb", project=run.wandb_project, mode=mode,
             run=wandb_run.id)
    return Tracker(wandb, wandb_run)
