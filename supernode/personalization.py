"""A policy each lab can deploy: the final global model, fine-tuned on the lab's own data.

A federation's global model serves every site's data; a lab whose task or set-up differs from
the others' can do better on its own task by fine-tuning it for a few steps on its own
episodes (personalization, as FedPer/FedBN-style methods and "fine-tune after FL" baselines
do). With ``personalize-steps > 0`` the final evaluate message asks each site for that: after
scoring the global model, the site trains ``personalize-steps`` steps on its training episodes
with the run's local optimizer (its kept AdamW moments when ``optimizer-state = "keep"``) at a
constant ``personalize-lr`` (0 = the rate the federated schedule ended at), scores the result
on the same held-out frames, and keeps it: a LeRobot checkpoint under its state dir
(``run-<federation>/personalized/pretrained_model``), which never leaves the site. Only the
two numbers go back (``eval_action_mse`` and ``personal_action_mse`` in the reply).

The steps count in a site's budget: a run of R rounds x K local steps plus P personalization
steps costs each site R * K + P steps (the learning study compares it so with a site alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from common import atomic
from common.policy_factory import LoadedPolicy, learning_rate, save_pretrained
from supernode.evaluation import evaluate_action_mse
from supernode.local_site import Site
from supernode.training import build_optimizer, lr_at, train_round

PERSONALIZED_DIR = "personalized"
PRETRAINED_DIR = "pretrained_model"


@dataclass(frozen=True)
class Personalized:
    action_mse: float
    steps: int
    seconds: float
    checkpoint: Path


def personalize_lr(site: Site, bundle: LoadedPolicy) -> float:
    """``personalize-lr``, or (0.0) the lr the federated schedule ended at."""
    run = site.run
    if run.personalize_lr > 0:
        return run.personalize_lr
    return lr_at(run, learning_rate(run, bundle.config), run.total_steps - 1)


def personalize(site: Site, bundle: LoadedPolicy, federation_id: str | int,
                precision) -> Personalized:
    """Fine-tune ``bundle`` (holding the final global weights) in place on the site's training
    episodes, score it on the held-out episodes and keep it under the site's state dir."""
    run = site.run
    start = time.perf_counter()
    after = run.num_server_rounds + 1  # seeds and the data order of a round after the last
    steps = run.personalize_steps
    tuned = run.model_copy(update={
        "num_server_rounds": 1, "local_steps": steps, "lr": personalize_lr(site, bundle),
        "lr_scheduler": "constant", "warmup_steps": 0,
    })
    moments = site.optimizer_files(federation_id, after).start
    site.seed_round(after)
    tally = site.skip_tally("personalization", steps * run.batch_size)
    with precision:
        train_round(bundle, site.train_loader(after, tally), tuned, server_round=1,
                    proximal_mu=0.0, tally=tally, optimizer=build_optimizer(bundle, tuned, moments))
        result = evaluate_action_mse(bundle, site.eval_dataset(), run.eval_samples,
                                     run.eval_batch_size, run.seed)
    folder = site.run_state_dir(federation_id) / PERSONALIZED_DIR
    atomic.write_dir(folder, lambda tmp: save_pretrained(bundle, tmp / PRETRAINED_DIR))
    return Personalized(result.action_mse, steps, time.perf_counter() - start,
                        folder / PRETRAINED_DIR)
