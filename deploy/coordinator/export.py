"""``zk0 export RUN --out DIR``: a run's global checkpoint as a Hub-ready LeRobot policy folder.

DIR gets what ``lerobot-train`` pushes for a policy (``config.json``, ``model.safetensors``, the
pre/post-processors with the federation's normalization stats) plus a model card
(``README.md``: sites, rounds, strategy, wire dtype, held-out MSE per site per evaluated round,
base model), ``eval_mse.png`` and ``zk0_run.json`` (the run config and eval history behind the
card). The per-joint trajectory plots are not included: they show a lab's recorded actions,
which the labs agreed to send to the SuperLink, not to publish.

``--push-to-hub REPO`` then uploads DIR with ``huggingface_hub`` (token from ``HF_TOKEN`` only);
``--dry-run`` lists what would be uploaded and sends nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from common import atomic
from deploy.coordinator.model_card import model_card

HELP = "write a run's checkpoint as a Hub-ready LeRobot policy folder (optionally push it)"
CARD = "README.md"


class ExportError(ValueError):
    """The run folder, the checkpoint or the target cannot be used; says which and why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder, e.g. runs/run-<id>")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--round", type=int, default=None,
                        help="the checkpoint after this round (default: the newest)")
    parser.add_argument("--license", default="apache-2.0", help="license in the model card")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="upload the folder to this Hub model repo (token from HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --push-to-hub: list what would be uploaded, upload nothing")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (is {path.parent} a zk0 run folder?)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable ({err})") from None


def find_checkpoint(run_dir: Path, server_round: int | None) -> tuple[int, Path]:
    """(round, ``pretrained_model`` folder) of the asked or the newest checkpoint."""
    root = run_dir / "checkpoints"
    if server_round is None:
        last = root / "last"
        if not last.exists():
            raise ExportError(f"{last}: missing; the run saved no checkpoint")
        folder = last.resolve()
    else:
        folder = root / f"{server_round:06d}"
    pretrained = folder / "pretrained_model"
    if not (pretrained / "config.json").is_file():
        kept = sorted(p.name for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
        raise ExportError(f"{pretrained}: no LeRobot checkpoint there; kept rounds: {kept}")
    return int(folder.name), pretrained


def _notes(meta: dict[str, Any], policy_config: dict[str, Any]) -> list[str]:
    notes = []
    if meta.get("failed"):
        notes.append(f"The federated run did not finish ({meta['failed']}); this is the "
                     "checkpoint of a completed round.")
    vlm = str(policy_config.get("vlm_model_name", ""))
    if vlm.startswith(("/", ".")):
        notes.append(f"`config.json` names a local VLM folder (`vlm_model_name` = `{vlm}`, "
                     "zk0's offline preset): loading needs that folder, or a Hub id in its place.")
    return notes


def export_policy(run_dir: Path, out: Path, server_round: int | None = None,
                  license_id: str = "apache-2.0", force: bool = False) -> Path:
    """Write the export folder atomically; return it."""
    run_dir = run_dir.expanduser().resolve()
    meta = _read_json(run_dir / "run.json")
    history = _read_json(run_dir / "eval_history.json")
    exported_round, pretrained = find_checkpoint(run_dir, server_round)
    policy_config = _read_json(pretrained / "config.json")
    out = out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    card = model_card(meta, history, exported_round, str(policy_config.get("type", "policy")),
                      license_id, _notes(meta, policy_config))
    provenance = {
        "run_id": meta.get("run_id"),
        "round": exported_round,
        "run_config": meta.get("run_config"),
        "sites": meta.get("sites"),
        "eval_history": {k: history[k] for k in ("metric", "rounds", "per_site", "weighted")},
    }

    def fill(tmp: Path) -> None:
        for item in sorted(pretrained.iterdir()):
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        chart = run_dir / "eval_mse.png"
        if chart.is_file():
            shutil.copy2(chart, tmp / chart.name)
        atomic.write_bytes(tmp / CARD, card.encode())
        atomic.write_json(tmp / "zk0_run.json", provenance)

    atomic.write_dir(out, fill)
    return out


def listing(folder: Path) -> list[tuple[str, int]]:
    return [(str(p.relative_to(folder)), p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()]


def push(folder: Path, repo: str, private: bool, dry_run: bool, message: str) -> str:
    """Upload ``folder`` to the Hub model repo ``repo`` (a thin call to ``huggingface_hub``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ExportError(f"--push-to-hub {repo!r}: {err}") from None
    url = f"https://huggingface.co/{repo}"
    files = listing(folder)
    print(f"{'would upload' if dry_run else 'uploading'} {len(files)} files "
          f"({sum(s for _, s in files) / 1e6:.1f} MB) from {folder} to {url}"
          f"{' (private)' if private else ''}:")
    for name, size in files:
        print(f"  {size:>12,}  {name}")
    if dry_run:
        return url
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ExportError("--push-to-hub: set HF_TOKEN in the environment (a write token)")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise ExportError("--push-to-hub: HF_HUB_OFFLINE is set; unset it to upload")
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                          commit_message=message)
    except HfHubHTTPError as err:
        raise ExportError(f"--push-to-hub {repo}: the Hub refused: {err}") from None
    return url


def run_cli(args: argparse.Namespace) -> int:
    if args.dry_run and not args.push_to_hub:
        print("zk0 export: --dry-run goes with --push-to-hub REPO", file=sys.stderr)
        return 2
    try:
        out = export_policy(args.run, args.out, args.round, args.license, args.force)
        print(f"[zk0] exported {out} (model card: {out / CARD})")
        if args.push_to_hub:
            provenance = json.loads((out / "zk0_run.json").read_text())
            url = push(out, args.push_to_hub, args.private, args.dry_run,
                       f"zk0 run {provenance['run_id']}, global model after round "
                       f"{provenance['round']}")
            print(f"[zk0] {'dry run, nothing uploaded' if args.dry_run else 'pushed'}: {url}")
    except ExportError as err:
        print(f"zk0 export: {err}", file=sys.stderr)
        return 1
    return 0
