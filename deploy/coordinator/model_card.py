"""The model card (``README.md``) of an exported zk0 policy, from the run folder's own files.

The Hub reads the YAML front matter (license, ``library_name: lerobot``, tags, base model);
people read the rest: which labs trained it, how (rounds, local steps, strategy, wire dtype),
and how well it does on each lab's held-out episodes after every evaluated round
(``eval_history.json``, the numbers ``zk0 cluster`` and ``summary.html`` show).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from common.policy_factory import DEFAULT_PRETRAINED

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_model(run_config: Mapping[str, Any]) -> str:
    """The checkpoint the federation started from ("" for zk0's offline presets)."""
    return str(run_config.get("pretrained-path") or DEFAULT_PRETRAINED.get(
        str(run_config.get("policy")), ""))


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name))


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def mse_table(history: Mapping[str, Any], exported_round: int) -> str:
    """Markdown table: held-out action MSE per site and weighted, per evaluated model."""
    sites = list(history["per_site"])
    lines = [
        "| model after round | " + " | ".join(sites) + " | weighted |",
        "| ---: | " + " | ".join("---:" for _ in sites) + " | ---: |",
    ]
    for i, r in enumerate(history["rounds"]):
        label = f"**{r}** (this model)" if r == exported_round else str(r)
        cells = [_cell(history["per_site"][s][i]) for s in sites] + [_cell(history["weighted"][i])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _front_matter(base: str, license_id: str) -> str:
    lines = ["---", f"license: {license_id}", "library_name: lerobot", "pipeline_tag: robotics",
             "tags:", "- robotics", "- lerobot", "- smolvla", "- federated-learning", "- flower"]
    if is_hub_id(base):
        lines.append(f"base_model: {base}")
    lines.append("---")
    return "\n".join(lines)


def model_card(
    meta: Mapping[str, Any],
    history: Mapping[str, Any],
    exported_round: int,
    policy_type: str,
    license_id: str = "apache-2.0",
    notes: list[str] | None = None,
) -> str:
    """The card's Markdown for the checkpoint after ``exported_round`` of run ``meta``."""
    config = meta.get("run_config", {})
    base = base_model(config)
    sites = meta.get("sites", {})
    site_rows = "\n".join(
        f"| {name} | {info.get('train_frames')} | {info.get('eval_episodes')} |"
        for name, info in sorted(sites.items())
    )
    params = meta.get("parameters", {})
    strategy = config.get("strategy")
    if strategy in ("fedavgm", "diloco"):
        strategy = (f"{strategy} (server lr {config.get('server-lr')}, momentum "
                    f"{config.get('server-momentum')})")
    started_from = (f"[{base}](https://huggingface.co/{base})" if is_hub_id(base)
                    else f"`{base}`" if base else
                    f"zk0's `{config.get('policy')}` preset (generated offline, no Hub model)")
    final = history["weighted"][history["rounds"].index(exported_round)] \
        if exported_round in history.get("rounds", []) else None
    body = f"""
# {policy_type} fine-tuned by federated learning across {len(sites)} robot labs

This {policy_type} policy was fine-tuned with zk0 (Flower 1.42 + LeRobot 0.6.1)
by {len(sites)} labs together, each training on its own private LeRobot dataset. No frame or
image left a lab: the labs sent updates of the trainable parameters, normalization statistics
and evaluation results (and, where a lab allowed it, one held-out episode's actions for the
coordinator's plots, not published here). It is the global
model after round {exported_round} of {config.get("num-server-rounds")} (run
{meta.get("run_id")}), started from {started_from}.

Held-out action MSE of this model, weighted over the sites: **{_cell(final)}** (real units², see
below).

## Federation

| | |
| --- | --- |
| sites | {len(sites)} |
| rounds | {config.get("num-server-rounds")} x {config.get("local-steps")} local steps, batch \
{config.get("batch-size")} |
| strategy | {strategy}; FedProx mu {config.get("proximal-mu")} |
| wire dtype | {config.get("wire-dtype")} (trainable parameters only) |
| parameters | {params.get("trainable", "?"):,} trainable of {params.get("total", "?"):,} |
| normalization | exact federated mean/std over every site's training episodes (in the \
processor files) |

| site | training frames | held-out episodes |
| --- | ---: | ---: |
{site_rows}

## Held-out action MSE per site

Mean squared error, in the robot's units squared (degrees², gripper % of range²), of the
predicted action chunk against the recorded actions on each site's held-out episodes (whole
episodes never trained on; {config.get("eval-samples")} fixed frames per site; round 0 is the
starting model).

{mse_table(history, exported_round)}

![held-out action MSE per round](eval_mse.png)

## Use

```python
from lerobot.policies.factory import get_policy_class, make_pre_post_processors

policy = get_policy_class("{policy_type}").from_pretrained("<this repo or folder>")
preprocessor, postprocessor = make_pre_post_processors(
    policy.config, pretrained_path="<this repo or folder>"
)
```

Or deploy it on a robot with `lerobot-record --policy.path=<this repo>`.
"""
    extra = "".join(f"\n- {n}" for n in notes or [])
    if extra:
        body += f"\n## Notes\n{extra}\n"
    return _front_matter(base, license_id) + "\n" + body
