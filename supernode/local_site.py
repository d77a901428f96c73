"""A site as its ClientApp sees it: settings, private dataset, split, and the local policy.

Flower starts a fresh ClientApp process for every message, so nothing here is cached in memory:
each message re-opens the dataset (cheap, memory-mapped) and rebuilds the policy from the
locally stored backbone plus the trainable weights that came in the message.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import features as feat
from common.norm_stats import Moments
from common.policy_factory import (
    LoadedPolicy,
    build_policy,
    frozen_fingerprint,
    make_policy_config,
)
from common.protocol import SiteInfo
from common.settings import NodeConfig, RunConfig
from supernode import site_dataset as ds


class SiteMismatchError(ValueError):
    """The site cannot take part as configured: its backbone or data differ from the server's."""


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class Site:
    node: NodeConfig
    run: RunConfig
    meta: Any  # LeRobotDatasetMetadata
    split: ds.Split
    device: str

    @classmethod
    def open(cls, node_config: dict, run_config: dict) -> Site:
        """Parse both configs and open the dataset; every problem named before any training."""
        node = NodeConfig.parse(node_config, "node config")
        run = RunConfig.parse(run_config, "run config")
        if node.torch_threads:
            torch.set_num_threads(node.torch_threads)
        meta = ds.open_metadata(node)
        split = ds.split_episodes(meta.total_episodes, node.eval_episodes, node.split_seed)
        return cls(node, run, meta, split, resolve_device(node.device))

    @property
    def spec(self) -> dict[str, Any]:
        return feat.feature_spec(self.meta.features)

    def info(self) -> SiteInfo:
        frames = self.meta.episodes["length"] if self.meta.episodes is not None else None
        lengths = list(frames) if frames is not None else []

        def count(eps):
            return int(sum(lengths[i] for i in eps)) if lengths else 0

        return SiteInfo(
            site_name=self.node.site_name,
            features=self.spec,
            train_episodes=len(self.split.train),
            eval_episodes=len(self.split.eval),
            train_frames=count(self.split.train),
            eval_frames=count(self.split.eval),
            device=self.device,
        )

    def moments(self) -> dict[str, Moments]:
        """Sufficient statistics of the numeric features over the training episodes only."""
        dataset = ds.open_dataset(self.node, self.split.train)
        columns = ds.numeric_columns(dataset, feat.numeric_keys(self.spec))
        return {key: Moments.of(values) for key, values in columns.items()}

    def policy(
        self, expected: dict[str, Any], stats: dict, fingerprint: str | None
    ) -> LoadedPolicy:
        """The local policy, after checking the data and backbone agree with the server's."""
        feat.compare_specs(self.node.site_name, self.spec, expected)
        bundle = build_policy(self.run, self.meta.features, stats, self.device)
        if fingerprint is not None:
            mine = frozen_fingerprint(bundle.policy)
            if mine != fingerprint:
                raise SiteMismatchError(
                    f"site {self.node.site_name!r}: frozen backbone differs from the server's "
                    f"(sha256 {mine[:12]} vs {fingerprint[:12]}); use the same pretrained "
                    f"checkpoint/revision as the server (policy {self.run.policy!r})"
                )
        return bundle

    def _delta_timestamps(self):
        from lerobot.datasets.factory import resolve_delta_timestamps

        return resolve_delta_timestamps(make_policy_config(self.run, "cpu"), self.meta)

    def round_seed(self, server_round: int) -> int:
        """The seed of this site's round: same run seed, round and site -> same training.

        Python's hash() of a str changes per process; crc32 is stable across rounds and hosts.
        """
        site_key = zlib.crc32(self.node.site_name.encode())
        return (self.run.seed * 1_000_003 + server_round * 7919 + site_key) % 2**63

    def seed_round(self, server_round: int) -> None:
        """Seed every generator local training draws from (SmolVLA's flow-matching noise and
        time come from torch's global one): each ClientApp process starts unseeded otherwise."""
        seed = self.round_seed(server_round)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def train_loader(self, server_round: int) -> DataLoader:
        dataset = ds.open_dataset(self.node, self.split.train, self._delta_timestamps())
        generator = torch.Generator().manual_seed(self.round_seed(server_round))
        return DataLoader(
            dataset,
            batch_size=self.run.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= self.run.batch_size,
            num_workers=self.node.num_workers,
            generator=generator,
            pin_memory=self.device.startswith("cuda"),
        )

    def state_folder(self, run_id: int) -> Path:
        """Where this site keeps its state between the rounds of run ``run_id`` (optimizer
        moments, SCAFFOLD's control variate)."""
        from common.local_vlm import default_cache_dir

        root = Path(self.node.state_dir) if self.node.state_dir else (
            default_cache_dir() / "sites" / self.node.site_name
        )
        return root.expanduser() / f"run-{run_id}"

    def optimizer_state_file(self, run_id: int) -> Path | None:
        """Where this site keeps its optimizer moments between the rounds of run ``run_id``."""
        if self.run.optimizer_state == "reset":
            return None
        return self.state_folder(run_id) / "optimizer.pt"

    def eval_dataset(self):
        return ds.open_dataset(self.node, self.split.eval, self._delta_timestamps())
