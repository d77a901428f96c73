"""A strategy's server-side state as named arrays, so a resumed run steps exactly as the
interrupted one would have.

Flower's server optimizers keep their state in plain attributes and have no save/load:
FedAvgM ``current_arrays`` (an ArrayRecord) and ``momentum_vector`` (a list in parameter
order), FedOpt (FedAdam, FedYogi, FedAdagrad) ``current_arrays``, ``m_t`` and ``v_t`` (dicts by
parameter name). :func:`export_state` flattens whichever of the strategy's
``state_attributes`` are set into ``{"<attribute>/<key>": array}`` plus a layout (the
container type and key order of each attribute); :func:`restore_state` rebuilds the same
containers, arrays bit for bit, dtype for dtype. A strategy with other state (e.g. control
variates) lists its attributes in ``state_attributes``, or overrides
``CodecFedAvg.export_state``/``restore_state``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

#: Attributes of Flower's strategies that carry state from one round to the next.
FLOWER_STATE_ATTRIBUTES = ("current_arrays", "momentum_vector", "m_t", "v_t")

Layout = dict[str, dict[str, Any]]  # attribute -> {"type": ..., "keys": [...]}


def export_state(
    strategy: object, attributes: Iterable[str]
) -> tuple[dict[str, np.ndarray], Layout]:
    """The set attributes of ``strategy`` as named arrays, and how to put them back."""
    arrays: dict[str, np.ndarray] = {}
    layout: Layout = {}
    for attr in attributes:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            kind, items = "arrayrecord", [(k, v.numpy()) for k, v in value.items()]
        elif isinstance(value, Mapping):
            kind, items = "dict", list(value.items())
        elif isinstance(value, list | tuple):
            kind, items = "list", [(str(i), v) for i, v in enumerate(value)]
        else:
            raise TypeError(
                f"strategy state {attr!r} is a {type(value).__name__}; only ArrayRecord, dict "
                "and list of arrays can be saved"
            )
        layout[attr] = {"type": kind, "keys": [k for k, _ in items]}
        for key, v in items:
            arrays[f"{attr}/{key}"] = np.ascontiguousarray(np.asarray(v))
    return arrays, layout


def restore_state(strategy: object, arrays: Mapping[str, np.ndarray], layout: Layout) -> None:
    """Set the attributes :func:`export_state` saved back on ``strategy``."""
    for attr, spec in layout.items():
        values = [np.array(arrays[f"{attr}/{k}"]) for k in spec["keys"]]
        match spec["type"]:
            case "arrayrecord":
                value: Any = ArrayRecord(
                    {k: Array(v) for k, v in zip(spec["keys"], values, strict=True)}
                )
            case "dict":
                value = dict(zip(spec["keys"], values, strict=True))
            case "list":
                value = values
            case other:
                raise ValueError(f"strategy state {attr!r}: unknown container {other!r}")
        setattr(strategy, attr, value)
