"""TensorProto / JSON <-> numpy conversion and request validation against a signature.

Everything here is plain numpy + protobuf (no TensorFlow ops), so decoding a request
costs microseconds. Every check raises :class:`ServingError` with the gRPC status code a
TF Serving client expects and a message naming the offending input.
"""
from __future__ import annotations

import base64
from typing import Any, Iterable, Mapping, Optional

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# dtype enum -> (numpy dtype, TensorProto repeated field)
_DTYPES: dict[int, tuple[Any, str]] = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
    types_pb2.DT_STRING: (object, "string_val"),
}
_NP_TO_DT = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
             np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
             np.dtype(np.bool_): types_pb2.DT_BOOL, np.dtype(object): types_pb2.DT_STRING}


class ServingError(Exception):
  """A request failed with gRPC status `code`; `message` says why (naming the input)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


def invalid(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def dtype_name(dtype: int) -> str:
  """``DT_FLOAT`` style name of a DataType enum value."""
  try:
    return types_pb2.DataType.Name(dtype)
  except ValueError:
    return f"DataType({dtype})"


def shape_of(proto: tensor_shape_pb2.TensorShapeProto) -> Optional[list[int]]:
  """Dims of a shape proto (-1 = unknown); None when the rank is unknown."""
  if proto.unknown_rank:
    return None
  return [d.size for d in proto.dim]


def tensor_to_ndarray(name: str, tp: tensor_pb2.TensorProto) -> np.ndarray:
  """Decodes one request TensorProto; INVALID_ARGUMENT naming `name` if malformed."""
  if tp.dtype not in _DTYPES:
    raise invalid(f"input '{name}': dtype {dtype_name(tp.dtype)} is not supported")
  np_dtype, field = _DTYPES[tp.dtype]
  shape = shape_of(tp.tensor_shape)
  if shape is None or any(d < 0 for d in shape):
    raise invalid(f"input '{name}': tensor_shape must be fully defined, got "
                  f"{'unknown rank' if shape is None else shape}")
  size = int(np.prod(shape, dtype=np.int64))
  if tp.tensor_content and tp.dtype != types_pb2.DT_STRING:
    if len(tp.tensor_content) != size * np.dtype(np_dtype).itemsize:
      raise invalid(f"input '{name}': tensor_content has {len(tp.tensor_content)} bytes, "
                    f"shape {shape} of {dtype_name(tp.dtype)} needs "
                    f"{size * np.dtype(np_dtype).itemsize}")
    return np.frombuffer(tp.tensor_content, dtype=np_dtype).reshape(shape)
  values = getattr(tp, field)
  n = len(values)
  if np_dtype is object:
    arr = np.array(values, dtype=object) if n else np.empty(0, dtype=object)
  else:
    arr = np.array(values, dtype=np_dtype)
  if n == size:
    return arr.reshape(shape)
  if n == 1 and size > 1:   # TensorProto rule: a single value fills the whole shape
    return np.full(shape, arr[0], dtype=arr.dtype)
  if n == 0 and size == 0:
    return arr.reshape(shape)
  raise invalid(f"input '{name}': tensor_shape {shape} needs {size} values, got {n}")


def ndarray_to_tensor(arr: np.ndarray, tp: Optional[tensor_pb2.TensorProto] = None
                      ) -> tensor_pb2.TensorProto:
  """Encodes an output array the way TF Serving does (typed ``*_val`` fields)."""
  tp = tensor_pb2.TensorProto() if tp is None else tp
  arr = np.asarray(arr)
  if arr.dtype.kind in ("S", "U"):
    arr = arr.astype(object)
  dt = _NP_TO_DT.get(arr.dtype)
  if dt is None:
    raise ServingError(grpc.StatusCode.INTERNAL, f"cannot encode output dtype {arr.dtype}")
  tp.dtype = dt
  for d in arr.shape:
    tp.tensor_shape.dim.add().size = d
  field = _DTYPES[dt][1]
  flat = arr.reshape(-1)
  if dt == types_pb2.DT_STRING:
    getattr(tp, field).extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
  else:
    getattr(tp, field).extend(flat.tolist())
  return tp


class InputSpec:
  """One signature input: its tensor name in the graph, dtype enum and dims (-1 = any)."""

  def __init__(self, name: str, tensor: str, dtype: int, shape: Optional[list[int]]):
    self.name, self.tensor, self.dtype, self.shape = name, tensor, dtype, shape

  @property
  def np_dtype(self):
    return _DTYPES[self.dtype][0] if self.dtype in _DTYPES else None

  def describe(self) -> str:
    return f"{dtype_name(self.dtype)} {self.shape if self.shape is not None else '[?]'}"


def check_feeds(signature: str, specs: Mapping[str, InputSpec],
                arrays: Mapping[str, np.ndarray], max_rows: int) -> int:
  """Validates decoded inputs against the signature; returns the batch size.

  Raises INVALID_ARGUMENT for a missing/unknown input, wrong dtype, wrong rank or dim,
  or inconsistent batch sizes, and RESOURCE_EXHAUSTED above `max_rows` rows.
  """
  for name in sorted(arrays):
    if name not in specs:
      raise invalid(f"input '{name}' is not an input of signature '{signature}'; "
                    f"it takes {sorted(specs)}")
  rows, first = None, None
  for name, spec in sorted(specs.items()):    # by name: the same error for the same request
    # (a SignatureDef's inputs are a protobuf map, whose order may differ across processes)
    if name not in arrays:
      raise invalid(f"input '{name}' is missing; signature '{signature}' takes "
                    f"{sorted(specs)}")
    arr = arrays[name]
    if _NP_TO_DT.get(arr.dtype) != spec.dtype:
      got = dtype_name(_NP_TO_DT[arr.dtype]) if arr.dtype in _NP_TO_DT else str(arr.dtype)
      raise invalid(f"input '{name}': expected {dtype_name(spec.dtype)}, got {got}")
    if spec.shape is not None:
      if arr.ndim != len(spec.shape) or any(
          want >= 0 and want != got for want, got in zip(spec.shape, arr.shape)):
        raise invalid(f"input '{name}': expected shape {spec.shape} (-1 = any), got "
                      f"{list(arr.shape)}")
    if arr.ndim == 0:
      raise invalid(f"input '{name}': expected a batch dimension, got a scalar")
    if rows is None:
      rows, first = arr.shape[0], name
    elif arr.shape[0] != rows:
      raise invalid(f"input '{name}': batch size {arr.shape[0]} differs from input "
                    f"'{first}' ({rows})")
  rows = rows or 0
  if rows > max_rows:
    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"request has {rows} rows; this server takes at most {max_rows} per "
                       "request (--max_request_rows); split it")
  return rows


def json_to_ndarray(name: str, value: Any, spec: InputSpec) -> np.ndarray:
  """A REST (TF Serving JSON) value for input `name` -> array of the spec's dtype.

  Strings may be plain JSON strings (UTF-8) or ``{"b64": "..."}`` for binary data.
  """
  if spec.dtype == types_pb2.DT_STRING:
    def conv(v):
      if isinstance(v, list):
        return [conv(x) for x in v]
      if isinstance(v, dict) and set(v) == {"b64"}:
        try:
          return base64.b64decode(v["b64"], validate=True)
        except (ValueError, TypeError):
          raise invalid(f"input '{name}': invalid base64 in {{\"b64\": ...}}") from None
      if isinstance(v, str):
        return v.encode("utf-8")
      raise invalid(f"input '{name}': expected strings for {dtype_name(spec.dtype)}, got "
                    f"{type(v).__name__}")
    arr = np.array(conv(value), dtype=object)
    if any(isinstance(x, list) for x in arr.flat):
      raise invalid(f"input '{name}': ragged or malformed nested list")
    return arr
  np_dtype = spec.np_dtype
  if np_dtype is None:
    raise invalid(f"input '{name}': dtype {dtype_name(spec.dtype)} is not supported over REST")
  try:
    raw = np.array(value)
  except ValueError:
    raise invalid(f"input '{name}': ragged or malformed nested list") from None
  if raw.dtype == object or raw.dtype.kind in ("U", "S"):
    raise invalid(f"input '{name}': expected numbers for {dtype_name(spec.dtype)}, got "
                  f"{'strings' if raw.dtype.kind in ('U', 'S') else 'mixed or ragged values'}")
  if np.issubdtype(np_dtype, np.integer) and raw.dtype.kind == "f":
    if not np.all(np.equal(np.mod(raw, 1), 0)):
      raise invalid(f"input '{name}': expected integers for {dtype_name(spec.dtype)}, got "
                    "fractional numbers")
  return raw.astype(np_dtype)


def ndarray_to_json(arr: np.ndarray) -> Any:
  """Output array -> JSON value (bytes that are not UTF-8 become {"b64": ...})."""
  if arr.dtype == object:
    def conv(v):
      if isinstance(v, bytes):
        try:
          return v.decode("utf-8")
        except UnicodeDecodeError:
          return {"b64": base64.b64encode(v).decode("ascii")}
      return v
    return np.vectorize(conv, otypes=[object])(arr).tolist() if arr.size else arr.tolist()
  return arr.tolist()          # numpy scalars become Python int / float / bool

