"""Flower records as typed, validated models: what a message may hold, checked in one place.

Flower carries a message's content as records (``ConfigRecord``, ``MetricRecord``,
``ArrayRecord``) of plain values. Read with ``int(record[key])`` and friends, a value from
another machine can be missing, of another type, NaN, Inf, negative or absurdly large, and each
reader would have to remember which exceptions that raises (``int(inf)`` is an
``OverflowError``, a deeply nested JSON string a ``RecursionError``). So every record a site
sends is a :class:`RecordModel`: a strict pydantic model (as the run and node configs are,
:mod:`common.settings`) whose fields are the record's keys in kebab-case. Parsing a record
either gives a model whose every value is of its type and in its range, or raises
:class:`RecordError` naming the record, the key, what was expected and what came; nothing else.

Adding a key to a record is one annotated field; its bounds live next to it. The shared number
types below say what a count, a duration or a measurement may be.
"""

from __future__ import annotations

import io
import math
import reprlib
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

import numpy as np
import pydantic_core
from flwr.app import Array, ConfigRecord
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

#: The largest count a site may report (frames, samples, bytes): 2^40, ~1e12.
MAX_COUNT = 2**40
#: The largest magnitude of a measured value (a loss, an MSE, a feature statistic): finite
#: sums over MAX_COUNT such values stay finite in float64.
MAX_MAGNITUDE = 1e15
#: The longest duration a site may report, in seconds (~116 days).
MAX_SECONDS = 1e7
#: The longest free text a record value may hold (a note, an error message).
MAX_TEXT = 20_000
#: How a refused value is quoted in a reason (a 1 MB string is not repeated).
_SHORT = reprlib.Repr(maxstring=60, maxother=60, maxlist=4)


class RecordError(ValueError):
    """A record that is missing, of the wrong kind, or holds a value of the wrong type or out
    of range; the message names the record and the key."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _measured(value: float) -> float:
    if value != -1.0 and value < 0.0:
        raise ValueError("expected -1 (not measured) or a value >= 0")
    return value


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Positive = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS)]
#: A finite value of either sign (a loss: some policies' losses may be negative).
Finite = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
#: A non-negative measurement, or -1 when it was not measured.
Measured = Annotated[float, Field(ge=-1.0, le=MAX_MAGNITUDE), AfterValidator(_measured)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]


def describe(err: ValidationError, what: str) -> str:
    """pydantic's errors as one clause per value: ``<what>: key 'a.b': <problem> (got ...)``."""
    clauses = []
    for item in err.errors()[:8]:
        key = ".".join(str(p) for p in item["loc"])
        where = f"key '{key}': " if key else ""
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            clauses.append(f"{where}unexpected")
        elif item["type"] == "missing":
            clauses.append(f"{where}missing")
        elif item["type"] == "value_error":  # our own validators say what they got
            clauses.append(f"{where}{msg}")
        else:
            clauses.append(f"{where}{msg} (got {_SHORT.repr(item.get('input'))})")
    more = err.error_count() - len(clauses)
    return f"{what}: " + "; ".join(clauses) + (f"; and {more} more" if more > 0 else "")


def parse_json(value: Any) -> Any:
    """A JSON string's value (pydantic's parser: a depth limit, ValueError for anything bad);
    anything that is not a string passes unchanged (a model built in code)."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_TEXT * 10:
        raise ValueError(f"JSON text of {len(value)} characters (at most {MAX_TEXT * 10})")
    try:
        return pydantic_core.from_json(value)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None


class RecordModel(BaseModel):
    """One Flower record as a model: its fields are the record's keys (kebab-case).

    :meth:`from_record` is strict: every key present (defaults are for building a model in
    code), no other key, every value of its type (an int is a valid float, a bool is not a
    number), finite and in range.
    """

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True,
        allow_inf_nan=False,
    )
    #: The Flower record class that carries this model, and the record's name in a message.
    record_type: ClassVar[type] = ConfigRecord
    record_name: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _every_key_present(cls, values: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("complete") and isinstance(values, Mapping):
            aliases = {f.alias or name for name, f in cls.model_fields.items()}
            missing = sorted(aliases - set(values))
            if missing:
                raise ValueError(f"missing key(s) {missing}")
        return values

    @classmethod
    def from_record(cls, record: Any, name: str = "") -> Self:
        """Parse the record called ``name`` (default: the model's own record name) in a
        message, or raise :class:`RecordError`."""
        name = name or cls.record_name
        check_record_type(record, cls.record_type, name)
        try:
            return cls.model_validate(dict(record), context={"complete": True})
        except ValidationError as err:
            raise RecordError(describe(err, f"record '{name}'")) from None

    def to_record(self):
        return self.record_type(self.model_dump(by_alias=True))


def check_record_type(record: Any, expected: type, name: str) -> None:
    if not isinstance(record, expected):
        raise RecordError(
            f"record '{name}': a {type(record).__name__}, expected a {expected.__name__}"
        )


def wire_view(array: Array) -> np.ndarray:
    """Read-only, zero-copy view of an Array's .npy bytes (``Array.numpy()`` copies twice).

    Raises ValueError for bytes that are not exactly one numeric .npy array (object arrays,
    which only pickle could load, included).
    """
    fp = io.BytesIO(array.data)  # shares the bytes
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise ValueError("object arrays are refused (loading them needs pickle)")
    count = math.prod(shape)
    if len(array.data) - fp.tell() != count * dtype.itemsize:
        raise ValueError(
            f"{len(array.data) - fp.tell()} data bytes for shape {shape} of {dtype} "
            f"({count * dtype.itemsize} expected)"
        )
    if fortran:
        return array.numpy()
    return np.frombuffer(array.data, dtype=dtype, count=count, offset=fp.tell()).reshape(shape)


def read_array(array: Array, where: str, dtype: str, ndim: int) -> np.ndarray:
    """One array of a record, read without pickle and without trusting its header: exactly
    ``ndim`` dimensions of ``dtype``, or :class:`RecordError` naming ``where``."""
    try:
        view = wire_view(array)
    except Exception as err:  # numpy's header parser raises ValueError, SyntaxError, ...
        raise RecordError(f"{where}: not a valid .npy array ({type(err).__name__})") from None
    if view.dtype != np.dtype(dtype) or view.ndim != ndim:
        raise RecordError(
            f"{where}: {view.dtype} array of shape {view.shape}, expected {ndim}-D {dtype}"
        )
    return view
