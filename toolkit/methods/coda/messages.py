"""What crosses between the cloud and a device, as versioned msgpack messages (never pickle).

Every message is a msgpack map {"schema": NAME, "version": 1, "body": {...}}; arrays travel as
{"dtype", "shape", "data"} with the raw little-endian bytes in a msgpack bin. Decoding is strict:
the schema must be the expected one, the version one this side speaks (a newer or older one is
refused with a line saying so), the body must hold exactly the declared fields with their types,
every array must have its declared dtype and rank and a data length that matches its shape. A
message that fails any check raises `MessageError` (one line); nothing is ever evaluated.

Every field is bounded before any work (`Limits`): the message's bytes, map entries, strings (a
field's length), integers (int64: msgpack also carries uint64, which no field needs), numbers
(finite, |x| <= max_number, so sums of them never overflow), array rank (<= 4) and each
dimension and the element count (<= max_array; a shape such as [0, 2**63] is refused before
numpy sees it). msgpack lists are capped at the longest list a message holds (a shape), since
the decoder allocates a list as long as its header claims before reading the items.

Messages (schema version 1):
- coda.augment_request  device -> cloud: request_id, user (the cloud's own id for this device), the
  model_version whose embeddings made the keys, k, vectors float32 (Q, D): a summary of the local
  data (sample keys or their centroids), never raw samples.
- coda.augment_batch    cloud -> device: request_id, model_version, items int64 (K,), clicks uint8 (K,),
  similarity float32 (K,): the retrieved samples, as (item, click) only (no other user's id).
- coda.model_down       cloud -> device: model_version, programs {program: {parameter: float32 array}},
  settings {name: number or string}: the device's hyper-parameters (tau rule, epochs, ...).
- coda.update_up        device -> cloud: user, model_version, metrics {name: number}, weights
  {parameter: float32 array} (what the device returns; may be empty).
- coda.ack              cloud -> device: accepted, received (updates the cloud has accepted so far).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from dcl_core.errors import DclError

VERSION = 1
DTYPES = {"float32": np.float32, "int64": np.int64, "uint8": np.uint8}


class MessageError(DclError):
    """A message that is malformed, of another schema, or of a version this side does not speak."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a decoder accepts (the service's protection against oversized input)."""

    max_bytes: int = 8 << 20
    max_array: int = 1 << 22  # elements per array (and per dimension)
    max_entries: int = 256  # tensors / metrics / settings per map
    max_string: int = 256  # characters of a string field (request_id, model_version, ...)
    max_number: float = 1e15  # |metric| (2**63 sums of these stay far below float64's range)


MAX_RANK = 4  # the highest rank of any array a message carries
MAX_LIST = 8  # the longest msgpack list a message holds (an array's shape), with room for a bad rank
MAX_KEY = 200  # characters of a map key (tensor, metric, setting name)
INT64 = (-(1 << 63), (1 << 63) - 1)


# field type tags: "str", "int", "bool", ("array", dtype, rank), "tensors", "programs", "numbers", "settings"
ARR = "array"


class Message:
    SCHEMA: ClassVar[str]
    TYPES: ClassVar[dict[str, Any]]

    def to_bytes(self) -> bytes:
        body = {f.name: _encode(getattr(self, f.name), self.TYPES[f.name]) for f in fields(self)}  # type: ignore[arg-type]
        return msgpack.packb({"schema": self.SCHEMA, "version": VERSION, "body": body}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes, limits: Limits = Limits()):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageError(f"{cls.SCHEMA}: expected bytes, got {type(data).__name__}")
        if len(data) > limits.max_bytes:
            raise MessageError(f"{cls.SCHEMA}: {len(data):,} bytes exceed the limit of {limits.max_bytes:,}")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True,
                                  max_bin_len=limits.max_bytes, max_str_len=max(limits.max_string, MAX_KEY, 1024),
                                  max_array_len=MAX_LIST, max_map_len=max(limits.max_entries, 16), max_ext_len=0)
        except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
                ValueError, TypeError) as e:
            raise MessageError(f"{cls.SCHEMA}: not a msgpack message ({type(e).__name__}: {str(e)[:80]})") from None
        if not isinstance(obj, dict) or set(obj) != {"schema", "version", "body"}:
            raise MessageError(f"{cls.SCHEMA}: expected a map with schema, version and body")
        if obj["schema"] != cls.SCHEMA:
            raise MessageError(f"expected a {cls.SCHEMA} message, got schema {str(obj['schema'])[:60]!r}")
        version = obj["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
            raise MessageError(f"{cls.SCHEMA} version {str(version)[:20]} is not supported (this side speaks version "
                               f"{VERSION}); update the app or the cloud so both speak the same version")
        body = obj["body"]
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        if not isinstance(body, dict) or set(body) != set(names):
            got = sorted(map(str, body)) if isinstance(body, dict) else type(body).__name__
            raise MessageError(f"{cls.SCHEMA}: body must have exactly the fields {names}, got {got}")
        return cls(**{n: _decode(body[n], cls.TYPES[n], f"{cls.SCHEMA}.{n}", limits) for n in names})


def _encode(value: Any, tp: Any) -> Any:
    if isinstance(tp, tuple) and tp[0] == ARR:
        a = np.ascontiguousarray(value, dtype=DTYPES[tp[1]])
        return {"dtype": tp[1], "shape": list(a.shape), "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}
    if tp == "tensors":
        return {k: _encode(v, (ARR, "float32", None)) for k, v in value.items()}
    if tp == "programs":
        return {p: _encode(t, "tensors") for p, t in value.items()}
    if tp == "numbers":
        return {k: float(v) for k, v in value.items()}
    return value


def _decode(value: Any, tp: Any, where: str, limits: Limits) -> Any:
    if isinstance(tp, tuple) and tp[0] == ARR:
        return _array(value, tp[1], tp[2], where, limits)
    if tp == "str":
        if not isinstance(value, str):
            raise MessageError(f"{where}: expected a string, got {type(value).__name__}")
        if len(value) > limits.max_string:
            raise MessageError(f"{where}: {len(value):,} characters exceed the limit of {limits.max_string}")
        return value
    if tp == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise MessageError(f"{where}: expected an integer, got {type(value).__name__}")
        if not INT64[0] <= value <= INT64[1]:
            raise MessageError(f"{where}: {str(value)[:24]} is outside the 64-bit signed integer range")
        return value
    if tp == "bool":
        if not isinstance(value, bool):
            raise MessageError(f"{where}: expected true/false, got {type(value).__name__}")
        return value
    if not isinstance(value, dict):
        raise MessageError(f"{where}: expected a map, got {type(value).__name__}")
    if len(value) > limits.max_entries:
        raise MessageError(f"{where}: {len(value)} entries exceed the limit of {limits.max_entries}")
    if tp == "tensors":
        return {_key(k, where): _array(v, "float32", None, f"{where}[{k}]", limits) for k, v in value.items()}
    if tp == "programs":
        return {_key(k, where): _decode(v, "tensors", f"{where}[{k}]", limits) for k, v in value.items()}
    if tp == "numbers":
        out = {}
        for k, v in value.items():
            k = _key(k, where)
            if not _number(v) or abs(v) > limits.max_number:
                raise MessageError(f"{where}[{k}]: expected a finite number of magnitude <= {limits.max_number:g}, "
                                   f"got {str(v)[:30]!r}")
            out[k] = float(v)
        return out
    if tp == "settings":
        for k, v in value.items():
            k = _key(k, where)
            if not (_number(v) or (isinstance(v, str) and len(v) <= limits.max_string)):
                raise MessageError(f"{where}[{k}]: expected a finite number or a string of at most "
                                   f"{limits.max_string} characters, got {type(v).__name__}")
        return dict(value)
    raise AssertionError(tp)


def _key(k: Any, where: str) -> str:
    if not isinstance(k, str) or not 0 < len(k) <= MAX_KEY:
        raise MessageError(f"{where}: keys must be strings of 1..{MAX_KEY} characters")
    return k


def _number(v: Any) -> bool:
    """A finite float, or an int in int64's range (msgpack also decodes uint64)."""
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, int) and not isinstance(v, bool) and INT64[0] <= v <= INT64[1]


def _array(value: Any, dtype: str, rank: int | None, where: str, limits: Limits) -> np.ndarray:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise MessageError(f"{where}: expected an array map with dtype, shape and data")
    if value["dtype"] != dtype:
        raise MessageError(f"{where}: expected dtype {dtype}, got {str(value['dtype'])[:20]!r}")
    shape = value["shape"]
    # each dimension is bounded before the product, so nothing downstream (numpy) sees a dimension
    # it cannot hold, and a zero dimension cannot hide a huge one
    if (not isinstance(shape, list) or len(shape) > MAX_RANK or (rank is not None and len(shape) != rank)
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.max_array for d in shape)):
        raise MessageError(f"{where}: bad shape {str(shape)[:40]} (expected rank "
                           f"{rank if rank is not None else f'<= {MAX_RANK}'}, each dimension in "
                           f"0..{limits.max_array:,})")
    n = math.prod(shape)
    if n > limits.max_array:
        raise MessageError(f"{where}: {n:,} elements exceed the limit of {limits.max_array:,}")
    data = value["data"]
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    if not isinstance(data, bytes) or len(data) != n * itemsize:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise MessageError(f"{where}: data holds {size} bytes, shape {shape} of {dtype} needs {n * itemsize}")
    a = np.frombuffer(data, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<")).astype(DTYPES[dtype]).reshape(shape)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise MessageError(f"{where}: holds NaN or Inf values")
    return a


@dataclass
class AugmentRequest(Message):
    SCHEMA: ClassVar[str] = "coda.augment_request"
    TYPES: ClassVar[dict[str, Any]] = {"request_id": "str", "user": "int", "model_version": "str", "k": "int",
                                       "vectors": (ARR, "float32", 2)}
    request_id: str
    user: int
    model_version: str
    k: int
    vectors: np.ndarray


@dataclass
class AugmentBatch(Message):
    SCHEMA: ClassVar[str] = "coda.augment_batch"
    TYPES: ClassVar[dict[str, Any]] = {"request_id": "str", "model_version": "str", "items": (ARR, "int64", 1),
                                       "clicks": (ARR, "uint8", 1), "similarity": (ARR, "float32", 1)}
    request_id: str
    model_version: str
    items: np.ndarray
    clicks: np.ndarray
    similarity: np.ndarray


@dataclass
class ModelDown(Message):
    SCHEMA: ClassVar[str] = "coda.model_down"
    TYPES: ClassVar[dict[str, Any]] = {"model_version": "str", "programs": "programs", "settings": "settings"}
    model_version: str
    programs: dict[str, dict[str, np.ndarray]]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpdateUp(Message):
    SCHEMA: ClassVar[str] = "coda.update_up"
    TYPES: ClassVar[dict[str, Any]] = {"user": "int", "model_version": "str", "metrics": "numbers",
                                       "weights": "tensors"}
    user: int
    model_version: str
    metrics: dict[str, float]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Ack(Message):
    SCHEMA: ClassVar[str] = "coda.ack"
    TYPES: ClassVar[dict[str, Any]] = {"accepted": "bool", "received": "int"}
    accepted: bool
    received: int
