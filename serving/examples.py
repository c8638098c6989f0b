"""tf.Example building from feature rows, typed by a model's ``predict_raw`` signature.

The export contract's ``predict_raw`` signature has one input per feature (int64 /
string / float32, ``[batch]`` or ``[batch, max_len]`` for multi-valued ones), so its
metadata tells a client or the server how to type the values of a CSV or JSON row and
which features are lists. Used by warm-up, ``ssr_tf score`` and the benchmark.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from ssr_tf.errors import DataError

_SPLIT = re.compile(r"[|;,\s]+")


class FeatureType:
  """How one feature is written into a tf.Example: dtype enum and whether it is a list."""

  def __init__(self, name: str, dtype: int, multi: bool, width: int = 1):
    self.name, self.dtype, self.multi, self.width = name, dtype, multi, width

  def __repr__(self) -> str:
    return f"FeatureType({self.name!r}, {types_pb2.DataType.Name(self.dtype)}, multi={self.multi})"


def feature_types(signature_inputs: Mapping[str, Any]) -> dict[str, FeatureType]:
  """{feature: FeatureType} from a raw signature's inputs (objects with .dtype, .shape).

  Accepts InputSpec objects and TensorInfo protos alike.
  """
  out = {}
  for name, info in signature_inputs.items():
    if hasattr(info, "tensor_shape"):
      dims = [d.size for d in info.tensor_shape.dim]
    else:
      dims = list(info.shape or [-1])
    width = dims[1] if len(dims) > 1 and dims[1] > 0 else 1
    out[name] = FeatureType(name, info.dtype, len(dims) > 1, width)
  return out


def _values(ft: FeatureType, value: Any, where: str) -> list:
  if value is None or (isinstance(value, str) and value == ""):
    return []                                   # missing: the parser's default applies
  if isinstance(value, (list, tuple, np.ndarray)):
    items = list(value)
  elif ft.multi and isinstance(value, str):
    items = [v for v in _SPLIT.split(value.strip()) if v]
  else:
    items = [value]
  try:
    if ft.dtype == types_pb2.DT_STRING:
      return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in items]
    if ft.dtype in (types_pb2.DT_INT64, types_pb2.DT_INT32):
      return [int(float(v)) if isinstance(v, str) and "." in v else int(v) for v in items]
    return [float(v) for v in items]
  except (TypeError, ValueError):
    raise DataError(f"{where}: feature '{ft.name}' expects "
                    f"{types_pb2.DataType.Name(ft.dtype)} values, got {value!r}") from None


def make_example(row: Mapping[str, Any], types: Optional[Mapping[str, FeatureType]] = None,
                 where: str = "row") -> example_pb2.Example:
  """A tf.Example from a {feature: value} row.

  With `types` only known features are written, typed by their signature dtype (columns
  such as labels are skipped); without, types are guessed from the Python values.
  Empty / None values are left out (the model's parser fills its default).
  """
  ex = example_pb2.Example()
  fmap = ex.features.feature
  for name, value in row.items():
    if types is not None:
      ft = types.get(name)
      if ft is None:
        continue
    else:
      probe = value[0] if isinstance(value, (list, tuple)) and value else value
      dtype = _guess_dtype(probe)
      ft = FeatureType(name, dtype, isinstance(value, (list, tuple)))
    vals = _values(ft, value, where)
    if not vals:
      continue
    f: feature_pb2.Feature = fmap[name]
    if ft.dtype == types_pb2.DT_STRING:
      f.bytes_list.value.extend(vals)
    elif ft.dtype in (types_pb2.DT_INT64, types_pb2.DT_INT32):
      f.int64_list.value.extend(vals)
    else:
      f.float_list.value.extend(vals)
  return ex


# The scores of the export contract, primary first; a click-only model has click_prob only.
OUTPUTS = ("click_prob", "pay_prob")


class ExampleScorer:
  """What a ranking scorer (a server client or a local SavedModel) offers: scores for
  tf.Examples, feature types from ``predict_raw``, and from those, scores for plain rows.
  A context manager: leaving the ``with`` block calls ``close()``."""

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Releases the channel or session."""

  def feature_types(self) -> dict[str, FeatureType]:
    raise NotImplementedError

  def output_names(self) -> list[str]:
    """The scores serving_default returns, of ("click_prob", "pay_prob"): click_prob
    alone for a model of a click-only data set."""
    raise NotImplementedError

  def score_examples(self, examples: Sequence[Any]) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """click_prob (/ pay_prob) for {feature: value} rows (typed via predict_raw)."""
    types = self.feature_types() or None
    return self.score_examples([make_example(r, types, f"row {i}") for i, r in enumerate(rows)])


def _guess_dtype(value: Any) -> int:
  """int64 / float / string for an untyped value (numeric-looking strings are numbers)."""
  if isinstance(value, (bool, np.bool_)):
    return types_pb2.DT_INT64
  if isinstance(value, (int, np.integer)):
    return types_pb2.DT_INT64
  if isinstance(value, (float, np.floating)):
    return types_pb2.DT_FLOAT
  if isinstance(value, str):
    for cast, dtype in ((int, types_pb2.DT_INT64), (float, types_pb2.DT_FLOAT)):
      try:
        cast(value)
        return dtype
      except ValueError:
        pass
  return types_pb2.DT_STRING


def synthetic_rows(types: Mapping[str, FeatureType], n: int, seed: int = 0,
                   vocab: int = 1000) -> list[dict[str, Any]]:
  """`n` random rows for `types` (ids in [0, vocab), strings 'v<k>', floats ~ Gamma)."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    row = {}
    for name, ft in types.items():
      k = int(rng.integers(1, ft.width + 1)) if ft.multi else 1
      if ft.dtype == types_pb2.DT_STRING:
        vals = [f"v{int(x)}" for x in rng.integers(0, vocab, k)]
      elif ft.dtype in (types_pb2.DT_INT64, types_pb2.DT_INT32):
        vals = [int(x) for x in rng.integers(0, vocab, k)]
      else:
        vals = [float(x) for x in rng.gamma(2.0, 2.0, k)]
      row[name] = vals if ft.multi else vals[0]
    rows.append(row)
  return rows


def zero_feeds(inputs: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
  """Zero / empty-string tensors of `rows` rows for every raw input (warm-up)."""
  feeds = {}
  for name, spec in inputs.items():
    dims = [d if d >= 0 else 1 for d in (spec.shape or [-1])[1:]]
    if spec.dtype == types_pb2.DT_STRING:
      arr = np.empty([rows] + dims, dtype=object)
      arr[...] = b""
    else:
      arr = np.zeros([rows] + dims, dtype=spec.np_dtype)
    feeds[name] = arr
  return feeds
