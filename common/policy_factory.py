"""One place that turns a run config + dataset features into a LeRobot policy and its processors.

The SuperLink (which has no dataset) and every SuperNode build the policy through the same code
path from the same inputs, so the global checkpoint and the sites' local copies are the same
model. Only the trainable parameters travel; everything frozen is loaded locally from the
pretrained checkpoint (or, for the offline tiny preset, generated from a fixed seed), and a
fingerprint of it lets a site refuse to train on a backbone that differs from the server's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.local_vlm import SMOLVLM2_500M, TINY, VLMDims, write_local_vlm
from common.settings import RunConfig, SettingsError

SMOLVLA_BASE = "lerobot/smolvla_base"
SEED = 1234  # fixed: nodes without a pretrained checkpoint must generate the same backbone


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy with the processors that feed it and undo its normalization."""

    policy: Any  # lerobot PreTrainedPolicy (a torch.nn.Module)
    preprocessor: Any
    postprocessor: Any

    @property
    def config(self):
        return self.policy.config


def _generated_smolvla_config(run: RunConfig, device: str):
    """The offline presets: SmolVLA's architecture around a VLM generated from a fixed seed."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    if run.pretrained_path:
        raise SettingsError(
            f"run config: key 'pretrained-path' must be empty for policy '{run.policy}' "
            f"(it generates its own backbone offline), got {run.pretrained_path!r}"
        )
    if run.policy == "smolvla-random":  # the real architecture, random weights: for benchmarks
        return SmolVLAConfig(
            device=device, vlm_model_name=str(write_local_vlm(SMOLVLM2_500M)),
            load_vlm_weights=False,
        )
    dims: VLMDims = TINY
    return SmolVLAConfig(
        device=device,
        vlm_model_name=str(write_local_vlm(dims)),
        load_vlm_weights=False,
        resize_imgs_with_padding=(dims.image_size, dims.image_size),
        num_vlm_layers=dims.text_layers,
        chunk_size=10,
        n_action_steps=10,
        num_steps=10,
        tokenizer_max_length=16,
        # Measured on the demo data: lerobot's 1e-4 barely moves a model this small.
        optimizer_lr=3e-3,
        scheduler_warmup_steps=0,
    )


# zk0 presets generated offline; every other name is a LeRobot policy type.
PRESETS = {name: _generated_smolvla_config for name in ("smolvla-tiny", "smolvla-random")}
# Where a LeRobot policy type starts from when the run config names no checkpoint.
DEFAULT_PRETRAINED = {"smolvla": SMOLVLA_BASE}


def _pretrained_config(path: str, policy_type: str, device: str):
    """The config stored with a checkpoint (a local folder or a Hub repo), as ``lerobot-train
    --policy.path`` reads it: the checkpoint's own architecture, not the type's defaults."""
    from lerobot.configs import PreTrainedConfig

    try:
        cfg = PreTrainedConfig.from_pretrained(path)
    except Exception as err:  # local file errors, Hub errors, draccus parse errors
        raise SettingsError(
            f"run config: key 'pretrained-path': cannot read a LeRobot policy config from "
            f"{path!r}: {type(err).__name__}: {err}"
        ) from err
    if cfg.type != policy_type:
        raise SettingsError(
            f"run config: key 'pretrained-path': {path!r} holds a {cfg.type!r} policy, but key "
            f"'policy' is {policy_type!r}"
        )
    cfg.device = device
    cfg.pretrained_path = path
    return cfg


def make_policy_config(run: RunConfig, device: str = "cpu"):
    """LeRobot config for ``run.policy``: a zk0 preset or any registered LeRobot policy type
    (from ``pretrained-path``'s own config when there is one), with ``run.policy_options`` (a
    JSON object of the config's own fields) applied on top."""
    options = run.policy_options_dict()
    if run.policy in PRESETS:
        cfg = PRESETS[run.policy](run, device)
    else:
        import lerobot.policies  # noqa: F401  registers every policy type's config class
        from lerobot.configs import PreTrainedConfig

        known = sorted(set(PRESETS) | set(PreTrainedConfig.get_known_choices()))
        if run.policy not in known:
            raise SettingsError(
                f"run config: key 'policy': unknown policy {run.policy!r}; expected one of {known}"
            )
        config_cls = PreTrainedConfig.get_choice_class(run.policy)
        _check_options(config_cls, options)
        path = run.pretrained_path or DEFAULT_PRETRAINED.get(run.policy, "")
        if path:
            cfg = _pretrained_config(path, run.policy, device)
        else:
            # Constructed with the options: LeRobot configs validate them in __post_init__.
            cfg = config_cls(device=device, **options)
            options = {}
    _check_options(type(cfg), options)
    for key, value in options.items():
        setattr(cfg, key, value)
    return cfg


def _check_options(config_cls: type, options: Mapping[str, object]) -> None:
    """Only the config dataclass's own fields: not its methods or properties."""
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise SettingsError(
            f"run config: key 'policy-options': {unknown} are not fields of "
            f"{config_cls.__name__}"
        )


def learning_rate(run: RunConfig, cfg) -> float:
    """The run's lr, or the policy preset's own when the run config leaves it at 0."""
    return run.lr if run.lr > 0 else float(cfg.get_optimizer_preset().lr)


def policy_features(features: Mapping[str, Mapping[str, Any]]):
    """LeRobot dataset features -> (input, output) PolicyFeature dicts, LeRobot's own mapping."""
    from lerobot.configs import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    pf = dataset_to_policy_features(dict(features))
    outputs = {k: f for k, f in pf.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in pf.items() if k not in outputs}
    return inputs, outputs


def build_policy(
    run: RunConfig,
    features: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    device: str = "cpu",
) -> LoadedPolicy:
    """Build the policy for ``features`` with frozen weights loaded locally, plus processors.

    Mirrors ``lerobot.policies.factory.make_policy`` but takes the features dict instead of a
    dataset's metadata, because the SuperLink has no dataset.
    """
    policy = build_model(run, features, device)
    return with_processors(policy, stats, device)


def build_model(run: RunConfig, features: Mapping[str, Mapping[str, Any]], device: str = "cpu"):
    """The policy alone (no processors): the expensive part, which a site worker keeps."""
    from lerobot.policies.factory import get_policy_class

    cfg = make_policy_config(run, device)
    cfg.input_features, cfg.output_features = policy_features(features)
    if hasattr(cfg, "action_feature_names") and "action" in features:
        cfg.action_feature_names = list(features["action"].get("names") or [])
    policy_cls = get_policy_class(cfg.type)
    if cfg.pretrained_path:
        policy = policy_cls.from_pretrained(cfg.pretrained_path, config=cfg)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            policy = policy_cls(config=cfg)
    return policy.to(device)


def with_processors(
    policy: Any, stats: Mapping[str, Mapping[str, Any]], device: str = "cpu"
) -> LoadedPolicy:
    """``policy`` with the pre/post processors that normalize with ``stats`` (cheap to build)."""
    from lerobot.policies.factory import make_pre_post_processors

    torch_stats = {
        key: {name: torch.as_tensor(value, dtype=torch.float32) for name, value in s.items()}
        for key, s in stats.items()
    }
    pre, post = make_pre_post_processors(
        policy.config,
        dataset_stats=torch_stats,
        preprocessor_overrides={"device_processor": {"device": device}},
    )
    return LoadedPolicy(policy, pre, post)


def save_pretrained(bundle: LoadedPolicy, folder: Path) -> Path:
    """Write ``bundle`` in LeRobot's checkpoint layout (``config.json``, ``model.safetensors``,
    the pre/post-processor files with their normalization stats): what ``lerobot-train``
    writes and ``from_pretrained``/``make_pre_post_processors(pretrained_path=...)`` load."""
    bundle.policy.save_pretrained(folder)
    bundle.preprocessor.save_pretrained(folder)
    bundle.postprocessor.save_pretrained(folder)
    return folder


def trainable_parameters(policy: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that local training updates: the only ones that ever travel."""
    return {n: p for n, p in policy.named_parameters() if p.requires_grad}


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Float32 CPU copies (never views: the policy keeps training) of the trainable params."""
    return {
        n: p.detach().to("cpu", torch.float32, copy=True)
        for n, p in trainable_parameters(policy).items()
    }


def load_trainable(policy: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Copy ``state`` into the trainable parameters; names and shapes must match exactly."""
    params = trainable_parameters(policy)
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(
            f"parameter names differ from the policy's trainable set: missing {missing[:5]}, "
            f"unexpected {extra[:5]} ({len(missing)} missing, {len(extra)} unexpected)"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = torch.as_tensor(state[name])
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"parameter {name}: shape {tuple(value.shape)} != expected {tuple(param.shape)}"
                )
            param.copy_(value.to(param.device, param.dtype))


def frozen_fingerprint(policy: torch.nn.Module) -> str:
    """SHA-256 over the frozen parameters: equal on two nodes iff they share the backbone."""
    digest = hashlib.sha256()
    for name, param in policy.named_parameters():
        if param.requires_grad:
            continue
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
