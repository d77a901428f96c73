"""A site as its ClientApp sees it: settings, private dataset, split, and the local policy.

A ``Site`` keeps the datasets it opened (``datasets``) for as long as it lives: one message in
the per-message ClientApp, many rounds and runs in the site worker (:mod:`supernode.runtime`
decides what is kept and what is rebuilt). The policy is built from the locally stored backbone
plus the trainable weights that came in the message.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
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
from supernode.sample_guard import GuardedDataset, MissingEpisode, SkipTally, collate_skipping


@dataclass(frozen=True)
class OptimizerFiles:
    """A round's optimizer moments: read from ``start`` (None: fresh), saved to ``save``."""

    start: Path | None
    save: Path | None


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
    # Opened LeRobotDatasets by (episodes, delta timestamps): reused while this object lives.
    datasets: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

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
        """What this site declares at stage 0 (and reports as its weight): its training frames
        are those of the training episodes whose files are all there, the frames its
        statistics count and its training reads."""
        frames = self.meta.episodes["length"] if self.meta.episodes is not None else None
        lengths = list(frames) if frames is not None else []

        def count(eps):
            return int(sum(lengths[i] for i in eps)) if lengths else 0

        gone = ds.missing_files(self.meta, ds.dataset_root(self.node), self.split.train)
        return SiteInfo(
            site_name=self.node.site_name,
            features=self.spec,
            train_episodes=len(self.split.train),
            eval_episodes=len(self.split.eval),
            train_frames=count([ep for ep in self.split.train if ep not in gone]),
            eval_frames=count(self.split.eval),
            fps=float(self.meta.fps),
            device=self.device,
        )

    def moments(self) -> dict[str, Moments]:
        """Sufficient statistics of the numeric features over the training episodes only
        (those whose files are all there: the same episodes training reads)."""
        episodes = self._readable(self.split.train, self.skip_tally("statistics", 0))
        dataset = self._dataset(episodes)
        columns = ds.numeric_columns(dataset, feat.numeric_keys(self.spec))
        return {key: Moments.of(values) for key, values in columns.items()}

    def policy(
        self, expected: dict[str, Any], stats: dict, fingerprint: str | None
    ) -> LoadedPolicy:
        """The local policy, after checking the data and backbone agree with the server's."""
        feat.compare_specs(self.node.site_name, self.spec, expected)
        bundle = build_policy(self.run, self.meta.features, stats, self.device)
        if fingerprint is not None:
            self.check_fingerprint(frozen_fingerprint(bundle.policy), fingerprint)
        return bundle

    def check_fingerprint(self, mine: str, expected: str) -> None:
        """Refuse to train on a frozen backbone other than the server's."""
        if mine != expected:
            raise SiteMismatchError(
                f"site {self.node.site_name!r}: frozen backbone differs from the server's "
                f"(sha256 {mine[:12]} vs {expected[:12]}); use the same pretrained "
                f"checkpoint/revision as the server (policy {self.run.policy!r})"
            )

    def _dataset(self, episodes, delta_timestamps=None):
        key = (tuple(episodes), json.dumps(delta_timestamps, sort_keys=True))
        if key not in self.datasets:
            self.datasets[key] = ds.open_dataset(self.node, episodes, delta_timestamps,
                                                 meta=self.meta)
        return self.datasets[key]

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

    def skip_tally(self, what: str, planned: int) -> SkipTally:
        """A count of the samples one train or eval step leaves out (run's share applies)."""
        root = str(ds.dataset_root(self.node) or self.node.repo_id)
        return SkipTally(what, planned, self.run.max_bad_sample_share, root, self.node.site_name)

    def _readable(self, episodes: tuple[int, ...], tally: SkipTally) -> list[int]:
        """``episodes`` without those whose files are missing (counted in ``tally``)."""
        gone = ds.missing_files(self.meta, ds.dataset_root(self.node), episodes)
        if gone:
            lengths = list(self.meta.episodes["length"])
            tally.add_missing(
                [MissingEpisode(ep, int(lengths[ep]), rel) for ep, rel in gone.items()],
                sum(int(lengths[ep]) for ep in episodes),
            )
        return [ep for ep in episodes if ep not in gone]

    def train_loader(self, server_round: int, tally: SkipTally | None = None) -> DataLoader:
        """The round's shuffled batches; unreadable samples are left out of them and counted
        (:mod:`supernode.sample_guard`), and so are episodes with a missing file."""
        if tally is None:
            tally = self.skip_tally("training", self.run.local_steps * self.run.batch_size)
        episodes = self._readable(self.split.train, tally)
        dataset = self._dataset(episodes, self._delta_timestamps())
        generator = torch.Generator().manual_seed(self.round_seed(server_round))
        return DataLoader(
            GuardedDataset(dataset),
            batch_size=self.run.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= self.run.batch_size,
            num_workers=self.node.num_workers,
            generator=generator,
            pin_memory=self.device.startswith("cuda"),
            collate_fn=collate_skipping,
        )

    def run_state_dir(self, run_id: str | int) -> Path:
        """This site's own folder for a federation (optimizer moments, plots it keeps)."""
        return self.node.state_root / f"run-{run_id}"

    def optimizer_files(self, federation_id: str | int, server_round: int) -> OptimizerFiles:
        """Where round ``server_round`` of federation ``federation_id`` reads its optimizer
        moments from and saves them to (both None with ``optimizer-state = "reset"``).

        One file per round, ``optimizer-r000003.pt`` = the moments after round 3; a round
        starts from the newest file of an earlier round (a site that sat out rounds skips
        them). Reading one file and writing another keeps a round's input safe: a round the
        site trained for a run whose ServerApp was then killed leaves a file of that round,
        and the resumed run's same round never reads it (if the killed attempt is still
        running, both attempts start from the same moments and weights and write the same
        result). Files older than the one a round starts from are removed.
        """
        if self.run.optimizer_state == "reset":
            return OptimizerFiles(None, None)
        folder = self.run_state_dir(federation_id)
        earlier = sorted(p for p in folder.glob("optimizer-r*.pt")
                         if (r := _file_round(p)) is not None and r < server_round)
        for old in earlier[:-1]:
            old.unlink(missing_ok=True)
        return OptimizerFiles(earlier[-1] if earlier else None,
                              folder / f"optimizer-r{server_round:06d}.pt")

    def eval_dataset(self, tally: SkipTally | None = None) -> GuardedDataset:
        """The held-out episodes (those with a missing file left out and counted)."""
        if tally is None:
            tally = self.skip_tally("evaluation", self.run.eval_samples)
        episodes = self._readable(self.split.eval, tally)
        return GuardedDataset(self._dataset(episodes, self._delta_timestamps()))


def _file_round(path: Path) -> int | None:
    digits = path.stem.removeprefix("optimizer-r")
    return int(digits) if digits.isdigit() else None
