"""The local training step: FedProx term value and gradient, lr schedule, a real SmolVLA round."""

from __future__ import annotations

import math

import torch

from common.policy_factory import trainable_state
from common.settings import RunConfig
from supernode.training import add_proximal_gradient, lr_at, proximal_term


def test_proximal_term_value_and_gradient():
    torch.manual_seed(0)
    w = {"a": torch.randn(5, 3, requires_grad=True), "b": torch.randn(7, requires_grad=True)}
    g = {k: v.detach() + torch.randn_like(v) for k, v in w.items()}
    mu = 0.37
    term = proximal_term(w, g, mu)
    want = 0.5 * mu * sum(float(((w[k].detach() - g[k]) ** 2).sum()) for k in w)
    assert math.isclose(float(term), want, rel_tol=1e-6)
    term.backward()
    for k in w:  # d/dw (mu/2)||w - g||^2 = mu (w - g)
        torch.testing.assert_close(w[k].grad, mu * (w[k].detach() - g[k]))


def test_injected_proximal_gradient_equals_autograd():
    """The training loop adds mu (w - w_g) to the loss gradients: same as backprop of the term."""
    torch.manual_seed(1)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    w = [torch.randn(s, requires_grad=True) for s in shapes]
    anchors = [p.detach() + 0.1 * torch.randn_like(p) for p in w]
    mu = 0.05

    def loss_fn(params):
        return sum((p**3).sum() for p in params)

    loss_fn(w).backward()
    value = add_proximal_gradient(w, anchors, mu)
    injected = [p.grad.clone() for p in w]

    w2 = [p.detach().clone().requires_grad_(True) for p in w]
    term = proximal_term(dict(enumerate(w2)), dict(enumerate(anchors)), mu)
    (loss_fn(w2) + term).backward()
    for a, b in zip(injected, [p.grad for p in w2], strict=True):
        torch.testing.assert_close(a, b)
    assert math.isclose(value, float(term), rel_tol=1e-5)
    assert add_proximal_gradient(w, anchors, 0.0) == 0.0


def test_proximal_term_is_zero_at_the_anchor_and_for_mu_zero():
    w = {"a": torch.ones(3, requires_grad=True)}
    assert float(proximal_term(w, {"a": torch.ones(3)}, 1.0)) == 0.0
    assert float(proximal_term(w, {"a": torch.zeros(3)}, 0.0)) == 0.0


def test_lr_schedule_spans_the_federated_run():
    run = RunConfig.with_overrides({"num-server-rounds": 10, "local-steps": 10, "warmup-steps": 5})
    assert lr_at(run, 1.0, 0) == 0.2  # warmup
    assert lr_at(run, 1.0, 5) == 1.0  # peak after warmup
    assert math.isclose(lr_at(run, 1.0, 99), 0.1, abs_tol=1e-3)  # decayed by the last step
    mid = lr_at(run, 1.0, 52)
    assert 0.5 < mid < 0.6
    constant = RunConfig.with_overrides({"lr-scheduler": "constant"})
    assert lr_at(constant, 0.3, 1234) == 0.3


def test_a_round_on_real_data_moves_only_trainable_params(demo_root, tiny_run):
    """A real SmolVLA (tiny) round on a real dataset: loss finite, frozen weights untouched."""
    from common.norm_stats import global_stats
    from supernode.local_site import Site
    from supernode.training import train_round

    site = Site.open({"site-name": "site-0", "dataset-root": str(demo_root / "site-0")},
                     tiny_run.to_flwr())
    stats = global_stats(site.moments(), ["observation.images.top", "observation.images.wrist"])
    bundle = site.policy(site.spec, stats, None)
    frozen = {n: p.detach().clone() for n, p in bundle.policy.named_parameters()
              if not p.requires_grad}
    before = trainable_state(bundle.policy)
    result = train_round(bundle, site.train_loader(1), tiny_run, 1, proximal_mu=0.01)
    after = trainable_state(bundle.policy)
    assert result.steps == 3 and math.isfinite(result.loss_mean)
    assert result.proximal_mean > 0  # the weights moved away from the anchor
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for n, p in bundle.policy.named_parameters():
        if n in frozen:
            assert torch.equal(frozen[n], p.detach()), n


def test_optimizer_moments_carry_over_between_rounds(demo_root, tiny_run, tmp_path):
    """With optimizer-state=keep a site's AdamW resumes where its last round left off."""
    from common.norm_stats import global_stats
    from supernode.local_site import OptimizerFiles, Site
    from supernode.training import train_round

    run_config = {**tiny_run.to_flwr(), "optimizer-state": "keep"}
    node = {"site-name": "site-0", "dataset-root": str(demo_root / "site-0"),
            "state-dir": str(tmp_path / "state")}
    site = Site.open(node, run_config)
    files = site.optimizer_files("5", 1)
    assert files.start is None
    assert files.save == tmp_path / "state" / "run-5" / "optimizer-r000001.pt"
    stats = global_stats(site.moments(), ["observation.images.top", "observation.images.wrist"])
    bundle = site.policy(site.spec, stats, None)
    train_round(bundle, site.train_loader(1), site.run, 1, 0.0, files.save, files.start)
    assert oct(files.save.stat().st_mode & 0o777) == "0o600"
    first = torch.load(files.save)
    assert all(int(s["step"]) == 3 for s in first["state"].values())
    # round 3 (the site sat out round 2) starts from round 1's moments
    third = site.optimizer_files("5", 3)
    assert third.start == files.save
    train_round(bundle, site.train_loader(3), site.run, 3, 0.0, third.save, third.start)
    second = torch.load(third.save)
    assert all(int(s["step"]) == 6 for s in second["state"].values())  # resumed, not reset

    reset = Site.open(node, {**run_config, "optimizer-state": "reset"})
    assert reset.optimizer_files("5", 1) == OptimizerFiles(None, None)


def test_a_round_redone_after_an_interruption_ignores_its_earlier_attempt(tmp_path, tiny_run):
    """A site trained round 3 for a run whose ServerApp was then killed; the resumed run's
    round 3 must start from round 2's moments, not from the file the lost attempt left."""
    from common.settings import NodeConfig
    from supernode.local_site import Site

    node = NodeConfig(site_name="site-0", dataset_root=str(tmp_path), state_dir=str(tmp_path))
    site = Site(node, tiny_run.model_copy(update={"optimizer_state": "keep"}), None, None, "cpu")
    folder = tmp_path / "run-fed"
    folder.mkdir()
    for r in (1, 2, 3):
        (folder / f"optimizer-r{r:06d}.pt").write_bytes(b"x")
    files = site.optimizer_files("fed", 3)
    assert files.start == folder / "optimizer-r000002.pt"  # not the lost attempt's file
    assert files.save == folder / "optimizer-r000003.pt"
    assert sorted(p.name for p in folder.iterdir()) == [
        "optimizer-r000002.pt", "optimizer-r000003.pt"]  # round 1's is no longer needed
    assert site.optimizer_files("fed", 1).start is None
