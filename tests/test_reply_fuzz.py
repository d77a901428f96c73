"""No reply can stop or skew the federation: every field of real stage-0, train and evaluate
replies, fuzzed through the ServerApp's own steps.

Three sites answer with the replies they really send: stage 0 from zk0's site code on real
datasets, train and evaluate from zk0's site code training the tiny SmolVLA preset under
SCAFFOLD (so the update, the control-variate delta, the notes and a trajectory are all there),
recorded once. In each example one site (``site-2``) sends a mutated copy, signed with its own
registered key as a broken or compromised site would, or altered after signing as someone on
the path would; the ServerApp's unchanged steps run on them: stage 0
(``federated_stats.collect``), a training round (``federation.Rounds.train_round``: signature,
reply model, weight, codec, norm rule, SCAFFOLD's aggregation, reports, checkpoint) and the final
evaluation (``Rounds.final_eval``), over the in-process grid.

Every mutation is one the protocol cannot mean (hypothesis draws the record, the key or array,
and the change: another type, NaN/Inf, negative, huge, empty, a missing or extra key, record or
array, another record kind, another dtype or shape, cut bytes, a feature description that does
not parse or does not agree). It must hold that the step returns (the run goes on), ``site-2``
is refused with a named reason, and what the other two make is exactly what they make without
``site-2``: the merged statistics, the global model and SCAFFOLD's ``c`` bit for bit, the held-out
evaluation.

Budget: the ``zk0-ci`` hypothesis profile (derandomized, what CI runs); ``ZK0_FUZZ_PROFILE=
zk0-deep`` draws many more examples.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common import codec, norm_stats
from common.norm_stats import global_stats, merge_all, stats_to_record
from common.policy_factory import build_policy, frozen_fingerprint, trainable_state
from common.protocol import (
    ARRAYS,
    CODEC,
    CONFIG,
    CONTROL,
    CONTROL_CODEC,
    EXCLUDED_NOTICE,
    METRICS,
    MOMENTS,
    NOTES,
    SIGNATURE,
    SITE,
    STATS_QUERY,
    TRAJECTORY,
    TRAJECTORY_INFO,
    SiteInfo,
    SiteNotes,
    SiteReport,
)
from common.settings import RunConfig
from common.trajectory import Trajectory
from harness.inprocess_grid import InProcessGrid, server_context
from superlink import federated_stats
from superlink.authenticity import FederationGuard
from superlink.federation import Rounds
from superlink.reply_model import Expected
from superlink.reports import RunReport
from superlink.run_status import RoundLedger
from superlink.strategy import EVALUATE, TRAIN, make_strategy
from superlink.tracking import Tracker

settings.register_profile("zk0-ci", max_examples=6, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("zk0-deep", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
FUZZ = settings(settings.get_profile(os.environ.get("ZK0_FUZZ_PROFILE", "zk0-ci")))
STAGE_0_FUZZ = settings(FUZZ, max_examples=3 * FUZZ.max_examples)  # ~20x cheaper a step

RUN_ID = 1818
SITES = ("site-0", "site-1", "site-2")
BAD = "site-2"
#: Failure kinds a refused train/evaluate reply may carry, and the stage-0 refusals.
REFUSALS = {"malformed", "integrity", "nonfinite", "norm", "weight", "signature", "replay",
            "identity"}
#: Report keys whose value may be negative (a loss); everywhere else a negative number is wrong.
SIGNED = {"train-loss", "train-loss-last"}
#: Records a reply of each kind cannot do without (the others are optional).
REQUIRED = {
    STATS_QUERY: {SITE, MOMENTS},
    TRAIN: {METRICS, ARRAYS, CODEC, CONTROL, CONTROL_CODEC, TRAJECTORY, TRAJECTORY_INFO},
    EVALUATE: {METRICS, TRAJECTORY, TRAJECTORY_INFO},
}
#: Codec payloads: mutating their arrays, a consistent sender re-digests them.
PAYLOADS = {ARRAYS: CODEC, CONTROL: CONTROL_CODEC}
#: Kept reports: a reply refused after it parsed keeps its (real) evaluation.
KEEPS_REPORT = {"integrity", "nonfinite", "norm"}


# -- what a site sends, mutated ---------------------------------------------------------------


def clone(content: RecordDict) -> RecordDict:
    """A copy whose records can be changed without touching ``content`` (arrays are replaced,
    never edited in place)."""
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            out[key] = ArrayRecord(dict(record.items()))
        else:
            out[key] = type(record)({k: list(v) if isinstance(v, list) else v
                                     for k, v in record.items()})
    return out


def _number_mutations(key: str, real: float | int, metric: bool) -> st.SearchStrategy:
    """Values a numeric key holding ``real`` must refuse."""
    bad: list[st.SearchStrategy] = [
        st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300]),
        st.just([real]),  # a list where a number belongs
    ]
    if isinstance(real, int):
        bad += [st.just(float(real) + 0.5), st.integers(2**41, 2**62)]
    if not metric:
        bad += [st.just(str(real)), st.just(True)]
    if real >= 0 and key not in SIGNED:
        bad.append(st.integers(-10**9, -2) if isinstance(real, int)
                   else st.floats(-1e12, -1.001))
    return st.one_of(bad)


FEATURE_CHANGES = [
    lambda f: f.pop("action"),
    lambda f: f.__setitem__("action", {**f["action"], "shape": []}),
    lambda f: f.__setitem__("action", {**f["action"], "shape": [0]}),
    lambda f: f.__setitem__("action", {**f["action"], "shape": [-6]}),
    lambda f: f.__setitem__("action", {**f["action"], "shape": ["6"]}),
    lambda f: f.__setitem__("action", {**f["action"], "shape": [7]}),
    lambda f: f.__setitem__("action", {**f["action"], "dtype": 5}),
    lambda f: f.__setitem__("action", {**f["action"], "names": [1, 2]}),
    lambda f: f.__setitem__("action", {**f["action"], "names": list(reversed(
        f["action"]["names"]))}),
    lambda f: f.__setitem__("action", {**f["action"], "extra": 1}),
    lambda f: f.__setitem__("observation.state", 7),
    lambda f: f.__setitem__("observation.extra", {"dtype": "float32", "shape": [2],
                                                  "names": None}),
    lambda f: f.pop(next(k for k in f if k.startswith("observation.images"))),
]


def _text_mutations(key: str, real: str) -> st.SearchStrategy:
    bad = [st.integers(-3, 3), st.just(real.encode()), st.just(True), st.just([real]),
           st.just("x" * 300_000)]
    if real:
        bad.append(st.just(""))
    if key == "features":
        def changed(index: int) -> str:
            features = json.loads(real)
            FEATURE_CHANGES[index](features)
            return json.dumps(features)

        bad += [st.just("[" * 10_000), st.just("{}"), st.just("[1, 2]"), st.just("{"),
                st.integers(0, len(FEATURE_CHANGES) - 1).map(changed)]
    if key in ("names", "units"):
        bad += [st.just("[1, 2]"), st.just("{}"), st.just("[" * 10_000), st.just("[]")]
    return st.one_of(bad)


def _bad_value(key: str, real: Any, metric: bool) -> st.SearchStrategy:
    if isinstance(real, bool):
        return st.sampled_from(["true", 1, b"\x01", [real]])
    if isinstance(real, int | float):
        return _number_mutations(key, real, metric)
    if isinstance(real, str):
        return _text_mutations(key, real)
    if isinstance(real, bytes):
        return st.sampled_from([b"", real[:-1], bytes([real[0] ^ 1]) + real[1:], real.hex()])
    if isinstance(real, list):
        bad = [st.just([]), st.just(real + real[:1]), st.just([1, 2]), st.just(str(real))]
        return st.one_of(bad[1:] if not real else bad)
    raise AssertionError(f"{key}: a {type(real).__name__} in a record")


def _array_mutation(draw, record: ArrayRecord, name: str) -> Array | None:
    """A changed copy of ``record[name]`` (None: drop it)."""
    view = np.array(codec.wire_view(record[name]))
    kind = draw(st.sampled_from(["nonfinite", "huge", "dtype", "shape", "empty", "cut", "drop"]))
    if kind == "drop":
        return None
    if kind == "cut":
        data = record[name].data
        return Array(dtype="float32", shape=(1,), stype=record[name].stype,
                     data=data[: draw(st.integers(0, len(data) - 1))])
    if kind == "dtype":
        other = draw(st.sampled_from([d for d in ("float32", "float64", "int64", "float16")
                                      if d != str(view.dtype)]))
        return codec.to_array(view.astype(other))
    if kind == "shape":
        grown = np.concatenate([view.reshape(-1), view.reshape(-1)[:1]])
        return codec.to_array(grown if view.ndim == 1 else grown[: view.size].reshape(-1, 1)
                              if view.size else grown)
    if kind == "empty":
        return codec.to_array(np.zeros((0,) * view.ndim, view.dtype))
    flat = view.reshape(-1).copy()
    if not flat.size:
        return codec.to_array(np.zeros(3, view.dtype))
    at = draw(st.integers(0, flat.size - 1))
    if view.dtype.kind in "iu":  # no NaN in an int array: out of range instead
        flat[at] = -7 if kind == "nonfinite" else 2**62
    elif view.dtype == np.uint16:  # bfloat16 bits: exponent all ones = Inf/NaN
        flat[at] = 0x7F80 if kind == "nonfinite" else 0x7F7F
    else:
        huge = np.finfo(view.dtype).max / 4 if view.dtype != np.float64 else 1e300
        flat[at] = draw(st.sampled_from([np.nan, np.inf, -np.inf])) if kind == "nonfinite" \
            else huge
    return codec.to_array(flat.reshape(view.shape))


def _redigest(content: RecordDict, arrays_key: str) -> None:
    """A consistent sender: the codec record's digests match the (changed) arrays."""
    meta_key = PAYLOADS[arrays_key]
    if meta_key not in content.config_records:
        return
    arrays = content[arrays_key]
    digests = [codec._array_digest(n, a) for n, a in arrays.items()]
    content[meta_key] = ConfigRecord({**dict(content[meta_key]), "digests": digests,
                                      "digest": codec._combined(digests)})


@dataclass(frozen=True)
class Mutation:
    what: str  # for the failure message
    apply: Callable[[RecordDict], None]
    after_signing: bool = False

    @property
    def kind(self) -> str:
        """What kind of change (hypothesis' statistics: ``--hypothesis-show-statistics``)."""
        return ("after signing: " if self.after_signing else "") + self.what.split(" ->")[0][:40]


EXTRA = "zz-extra"
#: The records a real reply of each kind holds (the fixture checks it).
RECORDS = {
    STATS_QUERY: [SITE, MOMENTS],
    TRAIN: [ARRAYS, CODEC, CONTROL, CONTROL_CODEC, METRICS, NOTES, SITE, TRAJECTORY,
            TRAJECTORY_INFO],
    EVALUATE: [METRICS, NOTES, SITE, TRAJECTORY, TRAJECTORY_INFO],
}


def targets(kind: str) -> list[str]:
    """Each record of a reply of ``kind`` is mutated in turn, and so are its signature and a
    record the protocol does not have."""
    return [*RECORDS[kind], SIGNATURE, EXTRA]


@st.composite
def mutations(draw, content: RecordDict, kind: str, key: str) -> Mutation:
    """One change of record ``key`` of ``content`` (a real reply of ``kind``) that no honest
    site could send: made before the site signs (a broken or hostile site) or, one time in
    six and always for the signature itself, after (someone on the path)."""
    after = key == SIGNATURE or draw(st.integers(0, 5)) == 0
    if key == EXTRA:
        record = draw(st.sampled_from([ConfigRecord({"x": 1}), MetricRecord({"x": 1.0}),
                                       ArrayRecord({"x": Array(np.zeros(2))})]))
        return Mutation("an extra record", lambda c: c.__setitem__(key, record))
    real = content[key] if key != SIGNATURE else None
    ops = ["key", "key", "key", "drop-key", "extra-key", "record-kind"]
    if key in REQUIRED[kind] or key == SIGNATURE:
        ops.append("drop-record")
    if key == SIGNATURE:
        ops.remove("extra-key")  # common.signing's record: extra keys are not its business
    if isinstance(real, ArrayRecord):
        ops = ["array", "array", "extra-array", "record-kind"] + (
            ["drop-record"] if key in REQUIRED[kind] else [])
    op = draw(st.sampled_from(ops))

    if op == "drop-record":
        return Mutation(f"record {key!r} dropped", lambda c: c.__delitem__(key), after)
    if op == "record-kind":
        def swap(c: RecordDict) -> None:
            record = c[key]
            if isinstance(record, ArrayRecord):
                c[key] = ConfigRecord({"x": 1})
            elif isinstance(record, MetricRecord):
                c[key] = ConfigRecord(dict(record))
            else:
                c[key] = ArrayRecord({"x": Array(np.zeros(1))})
        return Mutation(f"record {key!r} of another kind", swap, after)
    if op in ("array", "extra-array"):
        name = draw(st.sampled_from(sorted(real.keys())))
        consistent = draw(st.booleans())
        if op == "extra-array":
            new: Array | None = codec.to_array(np.zeros(3, np.float32))
            name = "zz.extra"
        else:
            new = _array_mutation(draw, real, name)

        def change_array(c: RecordDict) -> None:
            arrays = ArrayRecord(dict(c[key].items()))
            if new is None:
                del arrays[name]
            else:
                arrays[name] = new
            c[key] = arrays
            if consistent and key in PAYLOADS:
                _redigest(c, key)
        return Mutation(f"{op} {key!r}[{name!r}] -> "
                        f"{'dropped' if new is None else (new.dtype, new.shape)}",
                        change_array, after)

    def value_of(c: RecordDict) -> Any:
        return c[key]
    # a config or metric record (the signature's keys are common.signing's, known here)
    sample = real
    record_keys = sorted(sample.keys()) if sample is not None else [
        "scheme", "run-id", "round", "node-id", "site", "signature"]
    field = draw(st.sampled_from(record_keys))
    if op == "extra-key":
        return Mutation(f"record {key!r}: extra key", lambda c: value_of(c).__setitem__(
            "zz-extra", 1), after)
    if op == "drop-key":
        return Mutation(f"record {key!r}: key {field!r} dropped",
                        lambda c: value_of(c).__delitem__(field), after)
    metric = isinstance(sample, MetricRecord)
    if sample is not None:
        value = draw(_bad_value(field, sample[field], metric))
        return Mutation(f"record {key!r} key {field!r} = {str(value)[:60]!r}",
                        lambda c: value_of(c).__setitem__(field, value), after)
    # the signature: typed values only known after signing, so choose among generic ones
    value = draw(st.sampled_from([math.inf, math.nan, -1, 2**70, "x", b"", [1], True, 1.5]))
    return Mutation(f"signature key {field!r} = {value!r}",
                    lambda c: value_of(c).__setitem__(field, value), True)


# -- the sites --------------------------------------------------------------------------------


class Replaying:
    """A ClientApp whose sites answer with their recorded real replies, signed by each site's
    own key as zk0's ClientApp signs (``supernode.authenticity``); ``site-2``'s mutated, or
    failing outright (``mutation = "error"``, the reference runs)."""

    def __init__(self, recorded: dict[tuple[str, str], RecordDict]) -> None:
        from supernode.client_app import app

        self.real = app
        self.recorded = recorded
        self.mutation: Mutation | str | None = None

    def __call__(self, msg: Message, context) -> Message:
        from common.packing import packing_mod

        if msg.metadata.message_type == EXCLUDED_NOTICE:
            return self.real(msg, context)
        # as the real ClientApp: unpacked before the signature is checked, packed after
        # signing; a mutation works on the content, not on its wire packing
        return packing_mod(msg, context, self._answer)

    def _answer(self, msg: Message, context) -> Message:
        from supernode.authenticity import authenticity_mod

        kind = msg.metadata.message_type
        site = str(context.node_config["site-name"])
        mutation = self.mutation if site == BAD else None

        def answer(m: Message, _context) -> Message:
            if mutation == "error":
                raise RuntimeError("site-2 is down")
            content = clone(self.recorded[(site, kind)])
            if isinstance(mutation, Mutation) and not mutation.after_signing:
                mutation.apply(content)
            return Message(content, reply_to=m)

        reply = authenticity_mod(msg, context, answer)
        if isinstance(mutation, Mutation) and mutation.after_signing and not reply.has_error():
            mutation.apply(reply.content)
        return reply


@dataclass
class World:
    """The federation every example runs a step of, and what the steps make without site-2."""

    run: RunConfig
    config: dict[str, Any]
    grid: InProcessGrid
    app: Replaying
    root: Path
    good: federated_stats.FederationData | None = None  # stage 0 of site-0 and site-1
    infos: dict = None  # type: ignore[assignment]  # node -> SiteInfo, site-2's too
    bundle: Any = None
    weights: dict[str, np.ndarray] | None = None
    reference: dict[str, Any] | None = None

    @property
    def recorded(self) -> dict[tuple[str, str], RecordDict]:
        return self.app.recorded

    def guard(self) -> FederationGuard:
        guard = FederationGuard.for_run(server_context(self.config, RUN_ID))
        guard.refresh(self.grid)
        return guard

    def rounds(self) -> Rounds:
        """A fresh round loop after stage 0 (new strategy, new run folder)."""
        guard = self.guard()
        sites = {node: self.grid.site_name(node) for node in self.grid.contexts}
        for node, info in self.infos.items():
            guard.declare(node, info)
        strategy = make_strategy(self.run, stats_to_record(self.good.stats), sites,
                                 int(self.good.features["action"]["shape"][0]), guard=guard)
        run_dir = Path(tempfile.mkdtemp(dir=self.root))
        meta = {"run_id": RUN_ID, "run_config": self.config, "sites": {}, "started": time.time(),
                "features": self.good.features}
        return Rounds(
            grid=self.grid, run=self.run, run_dir=run_dir, report=RunReport(run_dir, meta),
            strategy=strategy, bundle=self.bundle, sites=sites, stats=self.good.stats,
            weights=dict(self.weights), federation_id=str(RUN_ID),
            fingerprint=frozen_fingerprint(self.bundle.policy), run_id=RUN_ID,
            features=self.good.features, ledger=RoundLedger(self.run.max_failed_rounds),
            tracker=Tracker())



def _record_replies(grid: InProcessGrid, config: dict, run: RunConfig,
                    rounds: Rounds) -> dict[tuple[str, str], RecordDict]:
    """What the sites answer to round 1's train message and to the final evaluate message
    (unsigned: the replaying app signs). site-2's replies, the ones mutated, come from zk0's
    own site code (training the tiny SmolVLA, evaluating it, predicting a trajectory); the
    others' cost less: real training without the evaluation before it, and the synthetic
    sites' evaluation (both valid replies a site may send)."""
    from harness.synthetic_sites import SyntheticSites
    from supernode import tasks
    from supernode.runtime import SiteRuntime

    recorded = {}
    train = rounds.strategy.configure_train(1, rounds._arrays(), rounds.instructions(1, True),
                                            grid)
    final = run.num_server_rounds
    evaluate = rounds.strategy.configure_evaluate(
        final, rounds._arrays(), rounds.instructions(final, evaluate=True, train=False), grid)
    for msg in train:
        ctx = grid.contexts[msg.metadata.dst_node_id]
        site, content = grid.site_name(ctx.node_id), msg.content
        if site != BAD:
            content = clone(content)
            content[CONFIG] = ConfigRecord({**dict(content[CONFIG]), "evaluate": False})
        recorded[(site, TRAIN)] = tasks.train(content, ctx.node_config, config, RUN_ID,
                                              SiteRuntime())
    for msg in evaluate:
        ctx = grid.contexts[msg.metadata.dst_node_id]
        site = grid.site_name(ctx.node_id)
        if site == BAD:
            content = tasks.evaluate(msg.content, ctx.node_config, config, RUN_ID,
                                     SiteRuntime())
        else:
            content = SyntheticSites()._answer(msg, ctx).content
            del content[TRAJECTORY], content[TRAJECTORY_INFO]
        recorded[(site, EVALUATE)] = content
    return recorded


@pytest.fixture(scope="module")
def world(demo_root, tmp_path_factory) -> World:
    from supernode import tasks

    root = tmp_path_factory.mktemp("fuzz")
    run = RunConfig.with_overrides({
        "policy": "smolvla-tiny", "strategy": "scaffold", "num-server-rounds": 1,
        "local-steps": 1, "batch-size": 2, "eval-samples": 4, "eval-batch-size": 4,
        "trajectory-frames": 6, "min-sites": 2, "poll-min-seconds": 0.01,
        "poll-max-seconds": 0.05, "round-timeout": 120.0, "join-timeout": 30.0,
        "output-dir": str(root / "runs")})
    config = run.to_flwr()
    nodes = [{"site-name": s, "dataset-root": str(demo_root / s)} for s in SITES]
    app = Replaying({})
    grid = InProcessGrid(app, nodes, config, RUN_ID)
    for node, ctx in grid.contexts.items():  # each site's own stage-0 answer
        app.recorded[(grid.site_name(node), STATS_QUERY)] = tasks.stats(
            RecordDict(), ctx.node_config, config, RUN_ID)
    app.mutation = "error"  # the reference: site-2 is down
    world = World(run, config, grid, app, root)
    world.good = federated_stats.collect(grid, run, world.guard())
    assert sorted(i.site_name for i in world.good.sites.values()) == ["site-0", "site-1"]
    world.infos = {node: SiteInfo.from_record(app.recorded[(grid.site_name(node),
                                                             STATS_QUERY)][SITE])
                   for node in grid.contexts}  # site-2 declared its data too
    world.bundle = build_policy(run, world.good.features, world.good.stats, "cpu")
    world.weights = {k: v.numpy() for k, v in trainable_state(world.bundle.policy).items()}
    app.recorded.update(_record_replies(grid, config, run, world.rounds()))
    for kind, names in RECORDS.items():  # what is fuzzed is what a site sends
        assert sorted(app.recorded[(BAD, kind)].keys()) == sorted(names), kind
    app.mutation = None  # site-2 as it is: accepted, so every refusal below is the mutation's
    honest = world.rounds()
    honest.train_round(1)
    assert sorted(honest.report.rounds[1]["sites"]) == list(SITES)
    assert honest.final_eval()["failures"] == []
    app.mutation = "error"
    fed = world.rounds()
    fed.train_round(1)
    world.reference = {"weights": fed.weights, "control": dict(fed.strategy.control),
                       "final": fed.final_eval()}
    assert 0 not in fed.report.evals  # only site-2 evaluated the starting model
    return world


def _same_eval(got: dict, want: dict, sites: set[str]) -> None:
    for site in sites:
        assert got["action_mse"][site] == want["action_mse"][site], site
        assert got["samples"][site] == want["samples"][site], site


# -- the properties ---------------------------------------------------------------------------


def _refused(failures: list[dict], what: str) -> dict:
    bad = [f for f in failures if f["site"] == BAD]
    assert len(bad) == 1, (what, failures)
    assert bad[0]["kind"] in REFUSALS and bad[0]["reason"], (what, bad[0])
    return bad[0]


@pytest.mark.parametrize("record", targets(STATS_QUERY))
@STAGE_0_FUZZ
@given(data=st.data())
def test_a_mutated_stage_0_reply_is_left_out_and_the_statistics_untouched(world, record, data):
    mutation = data.draw(mutations(world.recorded[(BAD, STATS_QUERY)], STATS_QUERY, record))
    event(mutation.kind)
    world.app.mutation = mutation
    got = federated_stats.collect(world.grid, world.run, world.guard())
    names = {info.site_name for info in got.sites.values()}
    assert names == {"site-0", "site-1"}, mutation.what
    reasons = {**{world.grid.site_name(n): r for n, r in got.failures.items()}, **got.excluded}
    assert reasons.get(BAD), (mutation.what, got.failures, got.excluded)
    assert got.features == world.good.features and got.fps == world.good.fps
    for key, m in got.moments.items():
        ref = world.good.moments[key]
        assert m.count == ref.count
        for field in ("sum", "sumsq", "min", "max"):
            np.testing.assert_array_equal(getattr(m, field), getattr(ref, field))


@pytest.mark.parametrize("record", targets(TRAIN))
@FUZZ
@given(data=st.data())
def test_a_mutated_train_reply_is_refused_and_the_round_aggregates_the_others(world, record, data):
    mutation = data.draw(mutations(world.recorded[(BAD, TRAIN)], TRAIN, record))
    event(mutation.kind)
    world.app.mutation = mutation
    fed = world.rounds()
    fed.train_round(1)  # returns: the run goes on
    entry = fed.report.rounds[1]
    assert entry["status"] == "ok" and sorted(entry["sites"]) == ["site-0", "site-1"], (
        mutation.what, entry["failures"])
    failure = _refused(entry["failures"], mutation.what)
    for name, value in world.reference["weights"].items():
        np.testing.assert_array_equal(fed.weights[name], value, err_msg=mutation.what)
    for name, value in world.reference["control"].items():
        np.testing.assert_array_equal(fed.strategy.control[name], value, err_msg=mutation.what)
    # site-2's evaluation of the starting model stands only when its reply parsed (its
    # update, not its report, was refused); the others did not evaluate it
    eval0 = fed.report.evals.get(0)
    kept = eval0 is not None and set(eval0["action_mse"]) == {BAD}
    assert kept == (failure["kind"] in KEEPS_REPORT), (mutation.what, failure, eval0)


@pytest.mark.parametrize("record", targets(EVALUATE))
@FUZZ
@given(data=st.data())
def test_a_mutated_evaluate_reply_is_refused_and_the_evaluation_is_the_others(world, record, data):
    mutation = data.draw(mutations(world.recorded[(BAD, EVALUATE)], EVALUATE, record))
    event(mutation.kind)
    world.app.mutation = mutation
    fed = world.rounds()
    entry = fed.final_eval()
    assert entry is not None
    _refused(entry["failures"], mutation.what)
    assert set(entry["action_mse"]) == {"site-0", "site-1"}, mutation.what
    _same_eval(entry, world.reference["final"], {"site-0", "site-1"})
    assert entry["action_mse_weighted"] == world.reference["final"]["action_mse_weighted"]


def test_the_reference_is_what_two_sites_make(world):
    """The baseline the properties compare with: site-2 down, the others aggregated."""
    assert sorted(world.reference["final"]["action_mse"]) == ["site-0", "site-1"]
    moved = [name for name, value in world.reference["weights"].items()
             if not np.array_equal(value, world.weights[name])]
    assert moved, "round 1 did not move the model"
    merged = merge_all([world.good.moments])
    assert global_stats(merged, [])["action"]["count"][0] == sum(
        i.train_frames for i in world.good.sites.values())


# -- what the fuzzing found, kept as plain regressions ----------------------------------------


def _instruction(kind: str) -> Message:
    server_context({}, RUN_ID)  # Message() needs a ServerApp's task identity
    msg = Message(RecordDict(), dst_node_id=1001, message_type=kind)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _train_reply(**changes: dict) -> Message:
    """A valid train reply (SCAFFOLD: with a control delta) with ``changes`` per record."""
    zero = {"w": np.zeros(3, np.float32)}
    update = codec.encode({"w": np.ones(3, np.float32)}, "float32", base=zero)
    content = RecordDict({
        ARRAYS: update.arrays, CODEC: update.meta, CONTROL: update.arrays,
        CONTROL_CODEC: update.meta,
        METRICS: MetricRecord({**SiteReport(num_examples=5).to_record(), **changes.get(
            METRICS, {})}),
        NOTES: ConfigRecord({**SiteNotes().to_record(), **changes.get(NOTES, {})}),
    })
    if TRAJECTORY_INFO in changes:
        arrays, info = Trajectory(0, 30.0, ("a",), ("deg",), np.arange(2),
                                  np.zeros((2, 1), np.float32), np.zeros((2, 1), np.float32),
                                  np.arange(1)).to_records()
        content[TRAJECTORY] = arrays
        content[TRAJECTORY_INFO] = ConfigRecord({**info, **changes[TRAJECTORY_INFO]})
    return Message(content, reply_to=_instruction(TRAIN))


def _stats_reply(site: dict | None = None, count: list | None = None) -> Message:
    spec = {"action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]}}
    info = SiteInfo(site_name="lab", features=spec, train_episodes=1, eval_episodes=1,
                    train_frames=3, eval_frames=3, fps=30.0, device="cpu")
    moments = norm_stats.to_record({"action": norm_stats.Moments.of(np.ones((3, 2)))})
    if count is not None:
        moments["action/count"] = Array(np.array(count, np.float64))
    return Message(RecordDict({SITE: ConfigRecord({**info.to_record(), **(site or {})}),
                               MOMENTS: moments}), reply_to=_instruction(STATS_QUERY))


EXPECTED = Expected(TRAIN, server_round=2, control=True, trajectory_frames=10, action_dims=1)


@pytest.mark.parametrize(("case", "reply"), [
    # int(inf) raised OverflowError in the progress callback and the weight check
    ("num-examples inf", lambda: _train_reply(metrics={"num-examples": math.inf})),
    # the failure kind was whatever the site wrote (a label of the failure metrics)
    ("train-error-kind of its choosing", lambda: _train_reply(notes={
        "train-error": "x", "train-error-kind": "norm"})),
    # a base round from the future reset SCAFFOLD's c for every site
    ("control-base-round from the future", lambda: _train_reply(metrics={
        "control-base-round": 7})),
    # OverflowError / RecursionError out of the trajectory's catch list
    ("trajectory episode inf", lambda: _train_reply(**{TRAJECTORY_INFO: {"episode": math.inf}})),
    ("trajectory names nested 10,000 deep", lambda: _train_reply(**{
        TRAJECTORY_INFO: {"names": "[" * 10_000}})),
])
def test_what_the_fuzzing_found_in_replies_stays_refused(case, reply):
    from superlink.federation import _progress
    from superlink.reply_model import ReplyRejected, parse_reply

    parse_reply(_train_reply(), EXPECTED)  # the unchanged reply is fine
    msg = reply()
    with pytest.raises(ReplyRejected) as refused:
        parse_reply(msg, EXPECTED)
    assert refused.value.kind == "malformed" and str(refused.value).startswith("train reply:")
    _progress({1001: "lab"}, "train")(msg, 1001)  # logs "unreadable", never raises


@pytest.mark.parametrize(("case", "reply"), [
    # RecursionError escaped stage 0's catch list
    ("features nested 10,000 deep", lambda: _stats_reply({"features": "[" * 10_000})),
    # untyped: a string bound then raised TypeError in every round's weight check
    ("train-frames a string", lambda: _stats_reply({"train-frames": "lots"})),
    ("no action feature", lambda: _stats_reply({"features": json.dumps(
        {"observation.state": {"dtype": "float32", "shape": [2], "names": None}})})),
    # IndexError / OverflowError from the moments' count
    ("moments count empty", lambda: _stats_reply(count=[])),
    ("moments count inf", lambda: _stats_reply(count=[math.inf])),
    ("moments count not the declared frames", lambda: _stats_reply(count=[4.0])),
])
def test_what_the_fuzzing_found_at_stage_0_stays_refused(case, reply):
    from superlink.reply_model import ReplyRejected, parse_stats

    parse_stats(_stats_reply())
    with pytest.raises(ReplyRejected) as refused:
        parse_stats(reply())
    assert refused.value.kind == "malformed" and str(refused.value).startswith("stats reply:")


def test_a_signature_record_with_inf_is_refused_not_raised():
    """``int(inf)`` in common.signing.verify raised OverflowError, not SignatureRejected."""
    from superlink.reply_model import ReplyRejected, check_signature_record

    content = RecordDict({SIGNATURE: ConfigRecord({
        "scheme": "x", "run-id": 1, "round": math.inf, "node-id": 1, "site": "lab",
        "signature": b"x"})})
    with pytest.raises(ReplyRejected, match=r"malformed signature record.*'round'") as refused:
        check_signature_record(content)
    assert refused.value.kind == "signature"
