"""Codec and aggregation speed at real size, as ratios to the physical limit.

Two benchmarks share this module because they share their inputs (the real trainable tensors
and one seeded update per site):

- ``codec``: encode+digest and decode+verify throughput on the real trainable tensors, both
  directions, against a plain memory copy of the same float32 bytes into new arrays (what any
  encoder must at least do). The SHA-256 of the wire bytes alone, on all cores, is reported
  too: it is the floor the digests put under the codec, whatever the codec does.
- ``aggregation``: the server's step with N sites' replies through zk0's real path
  (Flower's ``FedProx``/``FedAvg``/``FedAvgM`` over zk0's ``CodecFedAvg``, as ``make_strategy``
  builds them, given real Flower reply ``Message``s), and Flower's own ``aggregate_train`` on the
  decoded float32 replies, against a numpy weighted sum of the same float32 bytes.

Throughputs are float32 parameter bytes per second (4 bytes per trainable parameter, whatever
the wire dtype), so encode and decode numbers compare with each other and with the memcpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr

from bench import BenchContext, interleaved, simple
from bench.results import Metric, Section
from common import codec
from common.protocol import ARRAYS, CODEC, METRICS, SITE, SiteReport
from harness.inprocess_grid import server_identity
from superlink.strategy import TRAIN

GOAL = 2.0  # times the physical limit (memcpy / numpy weighted sum of the same bytes)
# fedavgm is zk0's default strategy; measured at server-lr 1 (its result is the plain weighted
# mean, checked below) and at the default server-lr 2 (Flower's FedAvgM step on that mean).
STRATEGIES = ("fedprox", "fedavg", "fedavgm")
DEFAULT = "fedavgm server-lr 2 (default)"
MEMCPY = "memcpy"  # into arrays already paged in: memory bandwidth, the physical limit
MEMCPY_NEW = "memcpy into new arrays"
NUMPY_SUM = "numpy weighted sum"


# Helpers -------------------------------------------------------------------------------------
def memcpy_new(arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Copy every array into a new one: the page faults an encoder's fresh output pays too.

    Context only, not the reference: how many of those faults a run pays depends on what
    the allocator happens to hold, so it swings 4x between runs.
    """
    out = []
    for a in arrays.values():
        dst = np.empty_like(a)
        np.copyto(dst, a)
        out.append(dst)
    return out


def memcpy(arrays: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> None:
    """The reference: ``np.copyto`` of every array into one already paged in (bandwidth)."""
    for name, a in arrays.items():
        np.copyto(out[name], a)


def sha256_all(arrays: ArrayRecord, pool: ThreadPoolExecutor) -> list[bytes]:
    """SHA-256 of every array's wire bytes on all cores: the floor any digest check costs."""
    return list(pool.map(lambda a: hashlib.sha256(a.data).digest(), arrays.values()))


def weighted_sum(sites: list[Mapping[str, np.ndarray]], factors: list[float]) -> dict:
    """The reference aggregation: ``out = w0*a0; out += w1*a1; ...`` in float32."""
    out = {}
    for name in sites[0]:
        acc = sites[0][name] * np.float32(factors[0])
        for arrays, f in zip(sites[1:], factors[1:], strict=True):
            acc += arrays[name] * np.float32(f)
        out[name] = acc
    return out


class _Grid:
    """The one thing ``configure_train`` asks of a Grid: which nodes are connected."""

    def __init__(self, sites: int) -> None:
        self.node_ids = list(range(100, 100 + sites))

    def get_node_ids(self) -> list[int]:
        return self.node_ids


@contextlib.contextmanager
def _quiet_flower() -> Iterator[None]:
    """Flower logs a line per aggregation; that is not what is being measured."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


# codec ---------------------------------------------------------------------------------------
def run_codec(ctx: BenchContext) -> list[Section]:
    weights = ctx.trainable()
    local = {k: torch.from_numpy(v) for k, v in ctx.site_state(0).items()}  # as a site has it
    nbytes = sum(v.nbytes for v in weights.values())
    wires = list(dict.fromkeys((ctx.wire_dtype, "float32")))
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    payloads = {w: (codec.encode(weights, w), codec.encode(local, w, base=weights)) for w in wires}

    scratch = {k: np.ones_like(v) for k, v in weights.items()}
    cases = {MEMCPY: simple(lambda: memcpy(weights, scratch)),
             MEMCPY_NEW: simple(lambda: memcpy_new(weights))}
    for w in wires:
        down, up = payloads[w]
        cases |= {
            f"encode+digest {w}, weights (server -> site)": simple(
                lambda w=w: codec.encode(weights, w)
            ),
            f"encode+digest {w}, update (site -> server)": simple(
                lambda w=w: codec.encode(local, w, base=weights)
            ),
            f"decode+verify {w}, weights (at the site)": simple(
                lambda down=down: codec.decode(down)
            ),
            f"decode+verify {w}, update (at the server)": simple(
                lambda up=up: codec.decode(up, base=weights)
            ),
            f"sha256 floor {w}": simple(lambda down=down: sha256_all(down.arrays, pool)),
        }
    best = interleaved(cases, ctx.repeats)
    pool.shutdown()

    t_copy = best[MEMCPY]
    section = Section(
        "codec",
        f"Codec speed ({ctx.policy}: {nbytes / 4:,.0f} trainable parameters, "
        f"{len(weights)} tensors, {nbytes / 1e9:.2f} GB as float32)",
        details={"float32_bytes": nbytes, "seconds": best, "wire_dtypes": wires},
    )
    section.add(
        Metric(MEMCPY + " (reference)", _gbps(nbytes, t_copy), "GB/s", 1.0, MEMCPY,
               note="np.copyto of the fp32 bytes: memory bandwidth"),
        Metric(MEMCPY_NEW, _gbps(nbytes, best[MEMCPY_NEW]), "GB/s", best[MEMCPY_NEW] / t_copy,
               MEMCPY, note="page faults included; varies with the allocator's state"),
    )
    for name, seconds in best.items():
        if name in (MEMCPY, MEMCPY_NEW):
            continue
        floor = name.startswith("sha256")
        section.add(
            Metric(
                name,
                _gbps(nbytes, seconds),
                "GB/s",
                seconds / t_copy,
                MEMCPY,
                goal=None if floor else GOAL,
                note="SHA-256 of the wire bytes alone, all cores" if floor else "",
            )
        )
    return [section]


# aggregation ---------------------------------------------------------------------------------
def _reply(train_msg: Message, payload: codec.Payload, site: int, examples: int) -> Message:
    """What site ``site`` sends back after training: its encoded update and its report."""
    content = RecordDict(
        {
            ARRAYS: payload.arrays,
            CODEC: payload.meta,
            METRICS: SiteReport(num_examples=examples, train_loss=0.5).to_record(),
            SITE: ConfigRecord({"site-name": f"site-{site}"}),
        }
    )
    return Message(content, reply_to=train_msg)


def _max_abs_diff(got: ArrayRecord, want: Mapping[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(codec.wire_view(got[k]) - v))) for k, v in want.items())


def run_aggregation(ctx: BenchContext) -> list[Section]:
    from superlink.strategy import make_strategy

    weights = ctx.trainable()
    wire = ctx.wire_dtype
    examples = [1000 + 500 * i for i in range(ctx.sites)]  # unequal: weights matter
    factors = [n / sum(examples) for n in examples]
    payloads = [
        codec.encode(
            {k: torch.from_numpy(v) for k, v in ctx.site_state(i).items()}, wire, base=weights
        )
        for i in range(ctx.sites)
    ]
    global_arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    sites = {node: f"site-{i}" for i, node in enumerate(_Grid(ctx.sites).node_ids)}

    def strategy(name: str, server_lr: float):
        # weights as declared (no cap): compared with Flower's own, unbounded weighted mean
        config = ctx.run_config(**{"strategy": name, "min-sites": ctx.sites,
                                   "server-lr": server_lr, "server-momentum": 0.0,
                                   "max-weight-ratio": 0.0})
        return make_strategy(config, ArrayRecord(), sites)

    strategies = {name: strategy(name, 1.0) for name in STRATEGIES}
    strategies[DEFAULT] = strategy("fedavgm", 2.0)
    flower = {  # Flower's own classes, fed the decoded float32 replies
        "fedprox": flwr.FedProx(proximal_mu=0.0), "fedavg": flwr.FedAvg(),
        "fedavgm": flwr.FedAvgM(server_learning_rate=1.0),
        DEFAULT: flwr.FedAvgM(server_learning_rate=2.0),
    }
    details: dict[str, Any] = {"sites": ctx.sites, "wire_dtype": wire, "num_examples": examples}

    with server_identity(), _quiet_flower():
        train_msgs = {
            name: s.configure_train(1, global_arrays, ConfigRecord(), _Grid(ctx.sites))
            for name, s in strategies.items()
        }
        for name, msgs in train_msgs.items():  # the ids a grid gives messages it pushes
            for i, msg in enumerate(msgs):
                msg.metadata.__dict__["_message_id"] = f"{name}-{i}"
        details["downlink_bytes_per_site"] = strategies["fedprox"].downlink_bytes

        def replies(name: str) -> list[Message]:
            sent = zip(train_msgs[name], payloads, examples, strict=True)
            return [_reply(m, p, i, n) for i, (m, p, n) in enumerate(sent)]

        # Flower's input: each site's decoded float32 weights, as CodecStrategy hands them over.
        decoded_msgs = []
        for i, msg in enumerate(replies("fedprox")):
            decoded = codec.decode(payloads[i], base=weights)
            msg.content = RecordDict(
                {
                    ARRAYS: ArrayRecord({k: Array(v) for k, v in decoded.items()}),
                    METRICS: MetricRecord({"num-examples": examples[i]}),
                }
            )
            decoded_msgs.append(msg)
            del decoded
        # numpy sums the very same float32 bytes, viewed in place.
        site_arrays = [{k: codec.wire_view(a) for k, a in m.content[ARRAYS].items()}
                       for m in decoded_msgs]
        want = weighted_sum(site_arrays, factors)

        # zk0's path, once untimed: check that it aggregates correctly before timing it.
        for name, zk0 in strategies.items():
            got, _ = zk0.aggregate_train(1, replies(name))
            failures = zk0.replies(TRAIN, 1).failures
            if got is None or failures:
                raise RuntimeError(f"{name}: aggregation failed: {failures}")
            lr = 2.0 if name == DEFAULT else 1.0  # global + lr * (mean - global)
            details[f"{name}_max_abs_diff_vs_numpy"] = _max_abs_diff(
                got, {k: weights[k] + lr * (v - weights[k]) for k, v in want.items()})
            flower[name].configure_train(1, global_arrays, ConfigRecord(), _Grid(ctx.sites))
            del got
        del want

        def zk0_case(name: str):
            def prepare():  # fresh replies each time: aggregate_train replaces their content
                r = replies(name)
                return lambda: strategies[name].aggregate_train(1, r)

            return prepare

        pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        cases = {
            NUMPY_SUM: simple(lambda: weighted_sum(site_arrays, factors)),
            **{
                f"Flower {n}.aggregate_train": simple(
                    lambda n=n: flower[n].aggregate_train(1, decoded_msgs)
                )
                for n in strategies
            },
            **{f"zk0 {n}": zk0_case(n) for n in strategies},
            "sha256 floor": simple(lambda: [sha256_all(p.arrays, pool) for p in payloads]),
        }
        best = interleaved(cases, ctx.repeats)
        pool.shutdown()

    n_params = sum(v.size for v in weights.values())
    t_ref = best[NUMPY_SUM]
    section = Section(
        "aggregation",
        f"Server aggregation, {ctx.sites} sites x {n_params:,} parameters ({wire} updates)",
        details=details | {"seconds": best},
    )
    section.add(Metric(NUMPY_SUM + " (reference)", t_ref, "s", 1.0, NUMPY_SUM))
    for key, label, note in (
        ("Flower {n}.aggregate_train", "Flower {inner}.aggregate_train ({n}), decoded fp32 "
         "replies", "Flower's aggregation step alone"),
        ("zk0 {n}", "zk0 {inner}.aggregate_train ({n}): verify + decode + aggregate",
         "the server's real step, Flower Message replies in"),
    ):
        for n in strategies:
            names = {"n": n, "inner": type(flower[n]).__name__}
            seconds = best[key.format(**names)]
            section.add(Metric(label.format(**names), seconds, "s", seconds / t_ref, NUMPY_SUM,
                               goal=GOAL, note=note))
    return [section]
