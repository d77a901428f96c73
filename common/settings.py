"""Typed settings shared by the SuperLink and the SuperNodes.

Flower hands the apps plain dicts (``context.run_config`` from ``[tool.flwr.app.config]`` plus
``flwr run -c`` overrides, ``context.node_config`` from ``flower-supernode --node-config``). A
typo or a wrong type there would otherwise surface an hour into a run as a cryptic tensor error,
so both are parsed into strict pydantic models first and every problem is reported by key name.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

StrategyName = Literal[
    "fedprox", "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
    # drift correction (superlink/strategy/{scaffold,fedexp,fedprox_decoupled}.py)
    "scaffold", "fedexp", "fedprox-decoupled",
    # outer Nesterov momentum on the sites' mean update (superlink/strategy/diloco.py)
    "diloco",
    # robust aggregation (superlink/strategy/{fedtrimmedavg,fedmedian,fedavg_clipped}.py)
    "fedtrimmedavg", "fedmedian", "fedavg-clipped",
]
LocalOptimizer = Literal["adamw", "sgd", "sgdm"]
WireDtype = Literal["float32", "float16", "bfloat16"]


class SettingsError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def format_validation_error(err: ValidationError, source: str) -> str:
    """Render pydantic's errors as one line per key, in the user's spelling (kebab-case)."""
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
            continue
        got = item.get("input")
        lines.append(f"{source}: key '{key}': {item['msg']} (got {got!r})")
    return "\n".join(lines)


class _Strict(BaseModel):
    # allow_inf_nan=False: TOML (and so ``flwr run -c``) carries inf and nan, and no key of
    # ours means anything by them (an infinite lr or round-timeout is garbage, not a setting).
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True,
        allow_inf_nan=False,
    )

    @classmethod
    def parse(cls, values: Mapping[str, Any], source: str):
        """Validate ``values`` (kebab-case keys) or raise :class:`SettingsError` naming each key."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise SettingsError(format_validation_error(err, source)) from None

    def to_flwr(self) -> dict[str, Any]:
        """Kebab-case dict, as Flower's run/node config carries it."""
        return self.model_dump(by_alias=True)


class RunConfig(_Strict):
    """The federation's run config (``[tool.flwr.app.config]``, overridden with ``flwr run -c``).

    Every field's ``description`` is its documentation: the manual's run-config reference is
    generated from this model (``docs/gen/``), and a test fails on a field without one. The
    defaults a run gets are pyproject.toml's values; the ones here apply only where a key is
    absent (tests, the in-process harness).
    """

    # Federation
    num_server_rounds: int = Field(
        20, ge=1,
        description="Federated rounds. The default schedule, 40 rounds x 25 local steps, "
        "averages often because averaging often fights client drift (see How it learns)",
    )
    fraction_train: float = Field(
        1.0, gt=0.0, le=1.0, description="Fraction of the connected sites sampled each round",
    )
    min_sites: int = Field(
        2, ge=1, description="Sites that must be connected before stage 0 and before every round",
    )
    round_timeout: float = Field(
        3600.0, ge=0.0,
        description="Seconds a round waits for replies (0 = forever). Late sites are recorded "
        "as failures (kind timeout), and the round's messages expire then: a late site never "
        "starts work the round no longer waits for (with 0, Flower's default message TTL of "
        "12 h applies). There is no separate TTL or retry key",
    )
    poll_min_seconds: float = Field(
        0.1, gt=0.0, le=60.0,
        description="The ServerApp's first wait after sending, before it asks the SuperLink "
        "for replies; each wait grows x1.5 up to poll-max-seconds",
    )
    poll_max_seconds: float = Field(
        0.5, gt=0.0, le=60.0,
        description="The ServerApp's longest wait between two polls for replies (at least "
        "poll-min-seconds): a reply waits at most this long to be noticed; each poll is one "
        "request to the SuperLink",
    )
    # Defaults from the learning study (the manual's How it learns; bench/results/quality.md).
    strategy: StrategyName = Field(
        "diloco",
        description="The aggregation strategy: Flower's fedavgm, fedprox, fedavg, fedadam, "
        "fedyogi, fedadagrad over zk0's codec and update checks; zk0's drift corrections "
        "scaffold (control variates), fedexp (extrapolated server step), fedprox-decoupled "
        "(proximal pull outside AdamW); diloco (outer Nesterov momentum on the sites' mean "
        "update, needs server-momentum > 0). Robust aggregation: Flower's fedtrimmedavg and "
        "fedmedian (coordinate-wise, unweighted), fedavg-clipped (norm clipping). See How it "
        "learns for which one when. server-lr and server-momentum apply to whichever strategy "
        "is chosen: set them with it",
    )
    proximal_mu: float = Field(
        0.0, ge=0.0,
        description="The FedProx term every site adds to its loss, with any strategy: "
        "(mu/2)·||w - w_global||² over the trainable parameters. With fedprox-decoupled it is "
        "a pull rate per unit of lr instead (e.g. 10) and must be > 0",
    )
    server_momentum: float = Field(
        0.9, ge=0.0, lt=1.0,
        description="DiLoCo's outer Nesterov momentum (default 0.9, published), or FedAvgM's "
        "server momentum (the previous default FedAvgM ran without: 0.0)",
    )
    server_lr: float = Field(
        0.7, gt=0.0,
        description="The server step. DiLoCo: the outer learning rate (default 0.7, published); "
        "FedAvgM: a multiple of the sites' weighted mean update (2.0 = twice it, the previous "
        "default); FedAdam/FedYogi/FedAdagrad: their eta, at most 0.1 (e.g. 0.01)",
    )
    scaffold_correction: Literal["decoupled", "gradient"] = Field(
        "decoupled",
        description="Where SCAFFOLD's correction c - c_i is applied at the sites: decoupled = "
        "w -= lr·(c - c_i) after each optimizer step (any local optimizer); gradient = added to "
        "the gradient before the optimizer (the paper's form, whose guarantees are for SGD)",
    )
    fedexp_epsilon: float = Field(
        1e-3, ge=0.0, description="FedExP: guard of the extrapolated step's denominator",
    )
    server_tau: float = Field(
        1e-3, gt=0.0, le=1.0,
        description="FedAdam/FedYogi/FedAdagrad: the adaptivity tau added to the root of the "
        "second moment (Reddi et al. 2021 use 1e-3); smaller values make every weight move by "
        "about server-lr per round whatever its update",
    )
    # Policy
    policy: str = Field(
        "smolvla",
        description="smolvla (fine-tune lerobot/smolvla_base), smolvla-tiny (the offline "
        "preset: the same SmolVLAPolicy class with a tiny SmolVLM made in code), "
        "smolvla-random (the real architecture with random weights), or any LeRobot policy "
        "type by name",
    )
    pretrained_path: str = Field(
        "",
        description="Checkpoint to start from (\"\" = the preset's default; smolvla: "
        "lerobot/smolvla_base)",
    )
    policy_options: str = Field(
        "",
        description="JSON object of the LeRobot policy config's own fields, e.g. "
        "'{\"chunk_size\": 20}'; checked against the config class before any site is contacted",
    )
    # Local training
    local_steps: int = Field(50, ge=1, description="Optimizer steps per site per round")
    batch_size: int = Field(8, ge=1, description="Training batch size at each site")
    lr: float = Field(
        0.0, ge=0.0,
        description="Peak learning rate (0 = the policy preset's: 1e-4 for SmolVLA, 3e-3 for "
        "the tiny preset)",
    )
    lr_scheduler: Literal["cosine", "constant"] = Field(
        "cosine",
        description="Learning-rate schedule over the whole federated run's global step "
        "(cosine decays to 10 % of the peak)",
    )
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps of the learning-rate schedule")
    optimizer_state: Literal["keep", "reset"] = Field(
        "keep",
        description="keep: each site carries its AdamW moments from round to round (in its "
        "state-dir); reset: a fresh optimizer every round",
    )
    local_optimizer: LocalOptimizer = Field(
        "adamw",
        description="The sites' optimizer: adamw (the policy preset's), sgd, or sgdm (momentum "
        "0.9); sgd and sgdm need an explicit lr",
    )
    # Exchange
    wire_dtype: WireDtype = Field(
        "float16",
        description="Dtype of the weights and updates on the wire (bfloat16 travels as uint16 "
        "bits); the server keeps full-precision weights, so rounding never accumulates",
    )
    # Evaluation
    eval_every: int = Field(
        1, ge=1, description="Evaluate the global model every k rounds (always after the last)",
    )
    eval_samples: int = Field(
        64, ge=1, description="Held-out frames per site (the same frames every round)",
    )
    eval_batch_size: int = Field(16, ge=1, description="Batch size of the held-out evaluation")
    seed: int = Field(
        0,
        description="Seed of the batches, the evaluation frames and the flow-matching noise; "
        "every round is seeded from (seed, round, site)",
    )
    trajectory_every: int = Field(
        1, ge=0,
        description="Per-joint plots of the starting model, every k-th evaluated model and the "
        "final one (0 = off)",
    )
    trajectory_frames: int = Field(
        300, ge=2, le=3000,
        description="Plot the first N frames of each site's fixed held-out episode",
    )
    max_bad_sample_share: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="Share of a round's planned samples a site may skip as unreadable (a video "
        "stretch that no longer decodes, a truncated file) before its step fails with "
        "BadDataError (0 = any unreadable sample is an error)",
    )
    personalize_steps: int = Field(
        0, ge=0,
        description="Steps each site fine-tunes the final global model on its own training "
        "episodes after the last round; the personalized policy stays at the site (a LeRobot "
        "checkpoint in its state dir) and both models are scored on its held-out episodes "
        "(0 = off)",
    )
    personalize_lr: float = Field(
        0.0, ge=0.0,
        description="Constant learning rate of the personalization steps (0.0 = the rate the "
        "federated schedule ended at: 10 % of the peak with the cosine schedule)",
    )
    # Outputs
    output_dir: str = Field(
        "runs", description="Where run folders go (on the SuperLink host)",
    )
    keep_checkpoints: int = Field(
        0, ge=0, description="Keep only the newest k round checkpoints (0 = all)",
    )
    tracking: Literal["none", "wandb"] = Field(
        "none",
        description="none, or wandb: Weights & Biases from the SuperLink (pip install "
        "'zk0[tracking]'; the API key only from WANDB_API_KEY)",
    )
    wandb_project: str = Field("zk0", description="The W&B project")
    wandb_entity: str = Field(
        "", description="The W&B entity (\"\" = the API key's default entity)",
    )
    # Faults and resume (the manual's Failure handling)
    join_timeout: float = Field(
        3600.0, ge=0.0,
        description="Seconds stage 0 and every round wait for min-sites connected sites "
        "(0 = forever); stage 0 then ends the run, a round goes on with the sites there",
    )
    min_replies: int = Field(
        1, ge=1,
        description="Usable updates a round needs to move the global model; at most "
        "max(1, int(fraction-train x min-sites)), the sites a round asks",
    )
    max_failed_rounds: int = Field(
        3, ge=1, description="Failed rounds in a row that end the run",
    )
    max_update_norm_ratio: float = Field(
        10.0, ge=0.0,
        description="Drop an update whose L2 norm exceeds this many times the round's median "
        "(SCAFFOLD's control deltas too); with 1 or 2 updates, the median of the others' and of "
        "those accepted in the last 5 aggregated rounds (0 = off; values in (0, 1] are "
        "refused). NaN/Inf updates are always dropped",
    )
    max_weight_ratio: float = Field(2.0, ge=0.0, description=(
        "The most a site's update may weigh in an average, as a multiple of the median weight "
        "(num-examples) of the round's other accepted updates; the cap is logged "
        "(weight_capped) and in the round report when it bites. 0 = weights as declared "
        "(bounded only by the frames declared at stage 0); values in (0, 1) are refused."))
    trim_beta: float = Field(0.2, ge=0.0, lt=0.5, description=(
        "strategy fedtrimmedavg: the share of the sites' values cut from each side of every "
        "coordinate before averaging (Flower's FedTrimmedAvg beta; int(beta x sites) each "
        "side, so 0.2 trims nothing below 5 sites)."))
    clip_norm_ratio: float = Field(1.0, gt=0.0, description=(
        "strategy fedavg-clipped: every update longer than this many times the median norm of "
        "the round's accepted updates is scaled down to that length before averaging."))
    upload_stall_timeout: float = Field(
        120.0, gt=0.0, le=86400.0,
        description="Seconds a reply's upload may go without a new part (Flower moves a reply "
        "in objects of at most 5 MiB) before that site's round fails as 'upload': a site "
        "revoked, crashed or cut off mid-upload never holds the round; round-timeout bounds "
        "every upload too (superlink.reply_uploads)",
    )
    resume_from: str = Field(
        "",
        description="A run folder (e.g. \"runs/run-123\") to continue from its last completed "
        "round",
    )

    @model_validator(mode="after")
    def _poll_range(self) -> RunConfig:
        if self.poll_min_seconds > self.poll_max_seconds:
            raise ValueError(
                f"poll-min-seconds {self.poll_min_seconds} exceeds poll-max-seconds "
                f"{self.poll_max_seconds}"
            )
        return self

    @model_validator(mode="after")
    def _server_lr_fits_the_strategy(self) -> RunConfig:
        # FedAdam/FedYogi/FedAdagrad move each weight by about server-lr per round: a value
        # meant for FedAvgM (a multiple of the mean update) makes them diverge at once.
        if self.strategy in ("fedadam", "fedyogi", "fedadagrad") and self.server_lr > 0.1:
            raise ValueError(
                f"server-lr {self.server_lr} is far too large for strategy {self.strategy!r} "
                "(it moves every weight by about server-lr per round); use e.g. 0.01"
            )
        return self

    @model_validator(mode="after")
    def _diloco_has_momentum(self) -> RunConfig:
        # DiLoCo's outer step is Nesterov momentum: without momentum it is FedAvgM's plain step.
        if self.strategy == "diloco" and self.server_momentum == 0.0:
            raise ValueError(
                "strategy 'diloco' is Nesterov momentum on the sites' mean update: set "
                "server-momentum > 0 (DiLoCo's published outer optimizer: server-lr = 0.7, "
                "server-momentum = 0.9), or use strategy 'fedavgm' for a plain server step"
            )
        return self

    @model_validator(mode="after")
    def _fault_rules_can_be_met(self) -> RunConfig:
        asked = max(1, int(self.fraction_train * self.min_sites))
        if self.min_replies > asked:
            raise ValueError(
                f"min-replies {self.min_replies} exceeds the {asked} site(s) a round asks when "
                f"min-sites={self.min_sites} are connected (fraction-train "
                f"{self.fraction_train}): rounds would fail with every site healthy"
            )
        if 0.0 < self.max_weight_ratio < 1.0:
            raise ValueError(
                f"max-weight-ratio {self.max_weight_ratio} would weigh every site below the "
                "others' median; use 1 or more (e.g. 2) or 0 to weigh as declared"
            )
        if 0.0 < self.max_update_norm_ratio <= 1.0:
            raise ValueError(
                f"max-update-norm-ratio {self.max_update_norm_ratio} would drop healthy sites "
                "(about half of them lie above the median); use a value above 1 (e.g. 10) or "
                "0 to turn the check off"
            )
        return self

    @property
    def message_ttl(self) -> float | None:
        """Lifetime of a round's messages: a site never starts work the round no longer
        waits for (None = Flower's default, 12 h, when round-timeout is 0)."""
        return self.round_timeout or None

    @model_validator(mode="after")
    def _decoupled_proximal_needs_mu(self) -> RunConfig:
        # Its mu is a pull rate per unit of lr: 0 would silently run plain FedAvg.
        if self.strategy == "fedprox-decoupled" and self.proximal_mu == 0.0:
            raise ValueError(
                "strategy 'fedprox-decoupled' needs proximal-mu > 0 (e.g. 10: each step pulls "
                "lr * 10 of the distance back toward the global weights)"
            )
        return self

    @model_validator(mode="after")
    def _sgd_needs_its_own_lr(self) -> RunConfig:
        # lr = 0.0 means the policy preset's lr, which is an AdamW lr (SmolVLA: 1e-4): SGD
        # steps are gradient-sized, not ~lr-sized per weight, and need a very different value.
        if self.local_optimizer != "adamw" and self.lr == 0.0:
            raise ValueError(
                f"local-optimizer {self.local_optimizer!r} needs an explicit lr: the preset's "
                "lr (lr = 0.0) is tuned for AdamW; set e.g. lr = 0.1"
            )
        return self

    def policy_options_dict(self) -> dict[str, Any]:
        if not self.policy_options:
            return {}
        try:
            value = json.loads(self.policy_options)
        except json.JSONDecodeError as err:
            raise SettingsError(
                f"run config: key 'policy-options': not JSON ({err}); expected an object such "
                'as \'{"chunk_size": 20}\''
            ) from None
        if not isinstance(value, dict):
            raise SettingsError("run config: key 'policy-options': expected a JSON object")
        return value

    @property
    def total_steps(self) -> int:
        return self.num_server_rounds * self.local_steps

    def is_eval_round(self, server_round: int) -> bool:
        """Global model after ``server_round`` rounds is evaluated (always after the last)."""
        return server_round % self.eval_every == 0 or server_round == self.num_server_rounds

    def is_trajectory_round(self, after_round: int) -> bool:
        """The sites plot predicted vs recorded actions for the global model after
        ``after_round`` rounds: the starting model, every ``trajectory-every``-th evaluated one
        and the final one (only evaluated models; none with ``trajectory-every = 0``)."""
        if self.trajectory_every == 0:
            return False
        if after_round in (0, self.num_server_rounds):
            return True
        evaluated = [r for r in range(1, after_round + 1) if self.is_eval_round(r)]
        return self.is_eval_round(after_round) and len(evaluated) % self.trajectory_every == 0

    @classmethod
    def defaults_from_pyproject(cls, path: Path = PYPROJECT) -> dict[str, Any]:
        with path.open("rb") as f:
            return tomllib.load(f)["tool"]["flwr"]["app"]["config"]

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Any], path: Path = PYPROJECT) -> RunConfig:
        """What ``flwr run -c`` would give: pyproject's values updated by ``overrides``."""
        values = cls.defaults_from_pyproject(path)
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise SettingsError(
                f"run config: unknown key(s) {unknown}; known keys are in {path} "
                "[tool.flwr.app.config]"
            )
        values.update(overrides)
        return cls.parse(values, "run config")


class NodeConfig(_Strict):
    """A SuperNode's node config: which lab this is and where its private dataset lives.

    Written by ``zk0 supernode`` (``flower-supernode --node-config``); each field's
    ``description`` is its documentation (the manual's node-config reference is generated from
    it).
    """

    site_name: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="The lab's name (reports use the name registered with the site's key)",
    )
    dataset_root: str = Field("", description="Local LeRobotDataset v3 folder")
    dataset_repo_id: str = Field(
        "",
        description="Hub repo id, downloaded by the site itself when dataset-root is empty "
        "(one of the two must be set)",
    )
    eval_episodes: int = Field(
        2, ge=1, description="Whole episodes held out for evaluation (a seeded choice)",
    )
    split_seed: int = Field(0, description="Seed of the held-out episodes' choice")
    device: str = Field(
        "auto",
        description="Torch device: auto (cuda when available, else mps, else cpu), cpu, cuda, "
        "cuda:N or mps",
    )
    video_backend: str = Field("pyav", description="LeRobot's video decoding backend")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    torch_threads: int = Field(0, ge=0, description="Torch CPU threads (0 = all cores)")
    state_dir: str = Field(
        "",
        description="The site's per-federation state (optimizer moments, SCAFFOLD's control "
        "variates, locally drawn plots, the personalized policy); \"\" = "
        "$ZK0_CACHE/sites/<site-name> (~/.cache/zk0); zk0 supernode sets <work-dir>/state",
    )
    share_trajectories: bool = Field(
        True,
        description="true: send the recorded and predicted actions of the first "
        "trajectory-frames frames of one held-out episode for the coordinator's per-joint "
        "plots; false: the site draws the plot itself into state-dir/run-<id>/plots/ and sends "
        "only a note",
    )
    # Paths (never key material) for signing (common.signing), set by the site's launcher:
    site_key: str = Field(
        "",
        description="Path of the node's OpenSSH EC private key (the SuperNode's own, 0600); "
        "the ClientApp signs every reply with it",
    )
    coordinator_pubkey: str = Field(
        "",
        description="Path of the coordinator's public key; every instruction must carry its "
        "signature",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: local training and evaluation under torch.autocast(bfloat16) (CUDA "
        "GPUs with bf16 support, or CPU); weights, optimizer and the exchange stay float32 (no "
        "zk0 supernode flag yet)",
    )

    @model_validator(mode="after")
    def _one_dataset_source(self) -> NodeConfig:
        if not self.dataset_root and not self.dataset_repo_id:
            raise ValueError("set dataset-root (a local LeRobotDataset) or dataset-repo-id")
        return self

    @property
    def state_root(self) -> Path:
        """This site's own folder: ``state-dir``, else ``$ZK0_CACHE/sites/<site>``."""
        from common.local_vlm import default_cache_dir

        root = Path(self.state_dir) if self.state_dir else (
            default_cache_dir() / "sites" / self.site_name
        )
        return root.expanduser()

    @property
    def repo_id(self) -> str:
        """LeRobot wants a repo id even for local data; a local one never reaches the Hub."""
        return self.dataset_repo_id or f"local/{self.site_name}"

    def to_flwr_arg(self) -> str:
        """``--node-config`` value for flower-supernode (TOML values, strings quoted)."""
        return " ".join(flwr_config_pairs(self.to_flwr(), "node config"))


_CONFIG_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def flwr_config_value(value: Any, key: str, source: str) -> str:
    """One value as Flower's ``key=value`` config syntax reads it back unchanged.

    Flower (``flwr.common.config.parse_config_args``, behind ``flwr run -c`` and
    ``flower-supernode --node-config``) cuts each value with the regex
    ``'[^']*'|"[^"]*"|\\S+`` and only then parses it as TOML. So a string is a TOML basic string
    ("...", escapes written by tomli_w) when it has no double quote, else a literal string
    ('...', no escapes at all) when it has no single quote and no control character; a string
    with both quote kinds cannot be carried and is refused, naming ``source`` and ``key``.
    """
    where = f"{source}: key '{key}'"
    if not isinstance(value, bool | int | float | str):
        raise SettingsError(f"{where}: {value!r} is not a bool, int, float or string")
    if not isinstance(value, str) or '"' not in value:
        return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")
    if "'" in value:
        raise SettingsError(
            f"{where}: {value!r} holds both quote kinds, which Flower's config syntax "
            "(flwr run -c, flower-supernode --node-config) cannot carry"
        )
    if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value):
        raise SettingsError(
            f"{where}: {value!r} holds a double quote and a control character, which "
            "Flower's config syntax cannot carry together"
        )
    return f"'{value}'"


def flwr_config_pairs(values: Mapping[str, Any], source: str) -> list[str]:
    """``{"num-server-rounds": 3}`` -> ``["num-server-rounds=3"]``, each pair checked."""
    pairs = []
    for key, value in values.items():
        if not _CONFIG_KEY.fullmatch(key):
            raise SettingsError(f"{source}: key {key!r}: only letters, digits, '-', '_', '.'")
        pairs.append(f"{key}={flwr_config_value(value, key, source)}")
    return pairs


# A value that is not TOML but reads as one word (a path, a policy name): taken as a string.
_BARE_WORD = re.compile(r"[^\s\"'#=\[\]{},]+")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs the way ``flwr run -c`` does (TOML values).

    A value must be exactly one TOML value, or else one bare word (taken as a string, so
    ``policy=smolvla-tiny`` needs no quotes). Anything else is refused rather than read in
    part: ``1\nlocal-steps=5`` is not 1, and ``"unterminated`` is not a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SettingsError(f"run config override {item!r}: expected key=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        if not _CONFIG_KEY.fullmatch(key):
            raise SettingsError(
                f"run config override {item!r}: key {key!r}: only letters, digits, '-', '_', '.'"
            )
        try:
            doc = tomllib.loads(f"v = {raw}")
        except tomllib.TOMLDecodeError:
            doc = None
        if doc is not None and set(doc) == {"v"} and "\n" not in raw:
            out[key] = doc["v"]
        elif _BARE_WORD.fullmatch(raw):
            out[key] = raw
        else:
            raise SettingsError(
                f"run config override {item!r}: the value is neither one TOML value (123, "
                "0.5, true, \"text\", '{\"a\": 1}') nor one bare word"
            )
    return out
