"""What a site keeps between messages, and when it must rebuild it.

Both ways of running a site's messages go through zk0's one ClientApp and one
:class:`SiteRuntime` per process (:func:`for_message`):

- Flower's per-message ``flwr-clientapp`` process (a plain SuperNode, ``--no-worker``) makes a
  new one for every message, so nothing outlives the message;
- the site worker (:mod:`supernode.worker`) runs every message in its own process and keeps
  one for its whole life (:func:`keep_loaded`), so torch, LeRobot, the policy, its processors,
  the optimizer and the opened datasets stay loaded across rounds and runs.

Same code, only the lifetime differs, which is what makes the two paths give the same numbers.
Every cached object is keyed by everything it was built from, and replaced (the old one freed
first: on a GPU two SmolVLAs may not fit) when any of that changes:

- the :class:`Site` (parsed configs, dataset metadata, split) by the node and run configs; its
  opened datasets survive a new run when the node config is unchanged;
- the policy by the run's policy / pretrained-path / policy-options, the dataset features and
  the device; its frozen-backbone fingerprint is computed once per build;
- the processors additionally by the federation's norm stats;
- the optimizer by the policy build and the run config: it is used only for a round that
  starts from the moments file it wrote itself, while that file is exactly as it wrote it
  (inode, mtime, size), so a resumed round, a deleted file or a file written by another process
  all rebuild it from disk.

A failed task drops the optimizer and every gradient (:meth:`SiteRuntime.forget_training`): a
round that died half-way must not leak its partial steps into the next one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common import features as feat
from common.policy_factory import (
    LoadedPolicy,
    build_model,
    frozen_fingerprint,
    with_processors,
)
from common.protocol import RoundInstructions
from common.settings import RunConfig
from supernode.local_site import Site
from supernode.training import build_optimizer


def _config_key(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True, default=str)


def stats_digest(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """SHA-256 over the norm stats' names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for key in sorted(stats):
        for name in sorted(stats[key]):
            value = torch.as_tensor(stats[key][name]).detach().cpu().contiguous()
            h.update(f"{key}/{name}/{value.dtype}/{tuple(value.shape)}".encode())
            h.update(value.numpy().tobytes())
    return h.hexdigest()


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class _Model:
    key: tuple
    generation: int
    policy: Any
    fingerprint: str | None = None


@dataclass
class _Optimizer:
    key: tuple
    path: Path | None  # the moments file it mirrors (the one it wrote last)
    stamp: tuple[int, int, int] | None
    optimizer: torch.optim.Optimizer


class SiteRuntime:
    """The site's loaded state: one per message (ClientApp) or one per process (worker)."""

    def __init__(self) -> None:
        self._site: Site | None = None
        self._site_key: tuple[str, str] | None = None
        self._model: _Model | None = None
        self._bundle: tuple[tuple, LoadedPolicy] | None = None
        self._optimizer: _Optimizer | None = None
        self._generation = 0
        self.builds = 0  # policies built by this runtime (the worker reports it)

    # -- site --------------------------------------------------------------------------------

    def site(self, node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Site:
        """The site for these configs; datasets opened under the same node config are kept."""
        key = (_config_key(node_config), _config_key(run_config))
        if self._site is None or key != self._site_key:
            site = Site.open(dict(node_config), dict(run_config))
            if self._site is not None and self._site_key and self._site_key[0] == key[0]:
                site.datasets = self._site.datasets
            self._site, self._site_key = site, key
        elif self._site.node.torch_threads:
            # Site.open sets it process-wide; anything since (codec casts) may have changed it
            torch.set_num_threads(self._site.node.torch_threads)
        return self._site

    # -- policy ------------------------------------------------------------------------------

    def policy(
        self, site: Site, instructions: RoundInstructions, stats: Mapping[str, Any]
    ) -> LoadedPolicy:
        """The site's policy for this message (weights still to be loaded), checked against the
        server's features and frozen-backbone fingerprint."""
        feat.compare_specs(site.node.site_name, site.spec, instructions.features)
        model = self._model_for(site)
        if model.fingerprint is None:
            model.fingerprint = frozen_fingerprint(model.policy)
        site.check_fingerprint(model.fingerprint, instructions.fingerprint)
        key = (model.generation, stats_digest(stats))
        if self._bundle is None or self._bundle[0] != key:
            self._bundle = (key, with_processors(model.policy, stats, site.device))
        for p in model.policy.parameters():  # a failed round may have left gradients behind
            p.grad = None
        return self._bundle[1]

    def _model_for(self, site: Site) -> _Model:
        run = site.run
        key = (run.policy, run.pretrained_path, run.policy_options,
               json.dumps(site.meta.features, sort_keys=True, default=str), site.device)
        if self._model is None or self._model.key != key:
            self._drop_model()
            self._generation += 1
            policy = build_model(run, site.meta.features, site.device)
            self.builds += 1
            self._model = _Model(key, self._generation, policy)
        return self._model

    def _drop_model(self) -> None:
        if self._model is None:
            return
        self._model = self._bundle = self._optimizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- optimizer ---------------------------------------------------------------------------

    def optimizer(
        self, bundle: LoadedPolicy, run: RunConfig, start: Path | None, save: Path | None
    ) -> torch.optim.Optimizer:
        """The optimizer for a round that reads its moments from ``start`` and saves them to
        ``save`` (:meth:`Site.optimizer_files`): the one kept from the last round while it
        still mirrors ``start`` (the file it wrote), else built from ``start`` on disk."""
        assert self._model is not None and bundle.policy is self._model.policy
        key = (self._model.generation, _config_key(run.to_flwr()))
        kept = self._optimizer
        if (
            start is not None
            and kept is not None
            and kept.key == key
            and kept.path == start
            and kept.stamp == _file_stamp(start)
        ):
            return kept.optimizer
        self._optimizer = None
        optimizer = build_optimizer(bundle, run, start if save is not None else None)
        if save is not None:  # "reset": a fresh optimizer every round, nothing to keep
            self._optimizer = _Optimizer(key, None, None, optimizer)
        return optimizer

    def optimizer_saved(self, save: Path | None) -> None:
        """Training wrote ``save``: the kept optimizer now mirrors that version of it."""
        if self._optimizer is not None and save is not None:
            self._optimizer.path = save
            self._optimizer.stamp = _file_stamp(save)

    def forget_training(self) -> None:
        """After a failed task: drop the optimizer and any gradients (the policy's trainable
        weights are overwritten by the next message anyway)."""
        self._optimizer = None
        if self._model is not None:
            for p in self._model.policy.parameters():
                p.grad = None

    def describe(self) -> dict[str, Any]:
        """What is loaded now (the worker logs it)."""
        return {
            "site": self._site.node.site_name if self._site else None,
            "policy": self._model.key[0] if self._model else None,
            "policy_builds": self.builds,
            "datasets": len(self._site.datasets) if self._site else 0,
            "optimizer": self._optimizer is not None,
            "pid": os.getpid(),
        }


_kept: SiteRuntime | None = None


def keep_loaded() -> SiteRuntime:
    """Make this process keep one runtime for every later message (the site worker calls it
    once at start); returns it."""
    global _kept
    if _kept is None:
        _kept = SiteRuntime()
    return _kept


def for_message() -> SiteRuntime:
    """The runtime a message uses: the one this process keeps, else a fresh one that dies with
    the message (a per-message ClientApp process, the in-process test grid)."""
    return _kept if _kept is not None else SiteRuntime()
