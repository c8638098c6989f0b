"""tf.Example building from feature rows, typed by a model's ``predict_raw`` signature.

The export contract's ``predict_raw`` signature has one input per feature (int64 /
string / float32, ``[batch]`` or ``[batch, max_len]`` for multi-valued ones), so its
metadata tells a client or the server how to type the values of a CSV or JSON row and
which features are lists. Used by warm-up, ``ssr_tf score`` and the benchmark.

Context + candidates requests (docs/serving.md, "Context and candidates"): the server
validates a ``context_candidates`` request and routes an ExampleListWithContext to it
(:func:`check_context_feeds`, :func:`context_feeds`); clients split rows into one context
and its candidates per run of equal context-feature values (:func:`split_context`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import grpc
import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from ssr_tf.errors import DataError
from ssr_tf.serving.tensors import ServingError, invalid

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
  """Zero / empty-string tensors of `rows` rows for every raw input (warm-up); a context
  signature gets one empty context and `rows` empty candidates."""
  feeds = {}
  for name, spec in inputs.items():
    if name == CONTEXT_INPUT and set(inputs) == {CONTEXT_INPUT, CANDIDATES_INPUT}:
      feeds[name] = np.array([b""], dtype=object)
      continue
    dims = [d if d >= 0 else 1 for d in (spec.shape or [-1])[1:]]
    if spec.dtype == types_pb2.DT_STRING:
      arr = np.empty([rows] + dims, dtype=object)
      arr[...] = b""
    else:
      arr = np.zeros([rows] + dims, dtype=spec.np_dtype)
    feeds[name] = arr
  return feeds


# -- context + candidates (ssr_tf/context.py's signature) ---------------------------------
CONTEXT_SIGNATURE = "context_candidates"
CONTEXT_FEATURES_SIGNATURE = "context_features"
CONTEXT_INPUT = "context"
CANDIDATES_INPUT = "candidates"


def context_feature_names(signatures: Mapping[str, Any]) -> list[str]:
  """The context features an export declares (its ``context_features`` signature's outputs;
  SignatureDef protos or resolved signatures), sorted; [] for exports without them or
  without a ``context_candidates`` signature."""
  sig = signatures.get(CONTEXT_FEATURES_SIGNATURE)
  if sig is None or CONTEXT_SIGNATURE not in signatures:
    return []
  return sorted(sig.outputs)


def is_context_signature(sig: Any) -> bool:
  """True for a signature of one context and N candidates (serialized tf.Examples)."""
  return set(sig.inputs) == {CONTEXT_INPUT, CANDIDATES_INPUT}


def candidate_features(signatures: Mapping[str, Any]) -> set[str]:
  """The export's features that are not context features (``predict_raw`` inputs less
  the ``context_features`` outputs)."""
  raw = signatures.get("predict_raw")
  return set(raw.inputs) - set(context_feature_names(signatures)) if raw is not None else set()


def check_context_example(context: example_pb2.Example, candidate_only: set[str]) -> None:
  """INVALID_ARGUMENT naming the candidate features a context example sets."""
  wrong = sorted(candidate_only.intersection(context.features.feature))
  if wrong:
    raise invalid(f"input '{CONTEXT_INPUT}': the context example sets candidate feature"
                  f"{'s' if len(wrong) > 1 else ''} {', '.join(map(repr, wrong))}; only the "
                  "model's context features belong in the context (send the others with "
                  "each candidate)")


def check_context_feeds(servable: Any, signature: str, arrays: Mapping[str, np.ndarray],
                        max_rows: int, context: Optional[example_pb2.Example] = None) -> int:
  """Validates the inputs of a context signature of `servable`; returns the number of
  candidates N.

  INVALID_ARGUMENT for a missing/unknown input, a non-string dtype, a ``context`` that is
  not one tf.Example (shape [] or [1]) or that sets candidate features, ``candidates`` not
  of rank 1 or empty; RESOURCE_EXHAUSTED for N > `max_rows` (as every request above
  --max_request_rows). `context`: the context already parsed (ExampleListWithContext).
  """
  wanted = (CANDIDATES_INPUT, CONTEXT_INPUT)
  for name in sorted(arrays):
    if name not in wanted:
      raise invalid(f"input '{name}' is not an input of signature '{signature}'; it takes "
                    f"{list(wanted)}")
  for name in wanted:
    if name not in arrays:
      raise invalid(f"input '{name}' is missing; signature '{signature}' takes {list(wanted)}")
    if arrays[name].dtype != object:
      raise invalid(f"input '{name}': expected DT_STRING (serialized tf.Example), got "
                    f"{arrays[name].dtype}")
  ctx, cand = arrays[CONTEXT_INPUT], arrays[CANDIDATES_INPUT]
  if ctx.ndim > 1 or ctx.size != 1:
    raise invalid(f"input '{CONTEXT_INPUT}': one serialized tf.Example per request (shape [] "
                  f"or [1]), got shape {list(ctx.shape)}")
  if cand.ndim != 1:
    raise invalid(f"input '{CANDIDATES_INPUT}': expected shape [N], got {list(cand.shape)}")
  n = cand.shape[0]
  if n == 0:
    raise invalid(f"input '{CANDIDATES_INPUT}': 0 candidates; a request needs at least one")
  if n > max_rows:
    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"input '{CANDIDATES_INPUT}': {n} candidates; this server takes at most "
                       f"{max_rows} per request (--max_request_rows); split it")
  if context is None:
    try:
      context = example_pb2.Example.FromString(ctx.reshape(-1)[0])
    except Exception:  # pylint: disable=broad-except  (DecodeError, or not bytes)
      raise invalid(f"input '{CONTEXT_INPUT}': not a serialized tf.Example") from None
  check_context_example(context, candidate_features(servable.signatures))
  return n


def context_feeds(servable: Any, sig: Any, inp: Any, max_rows: int
                  ) -> Optional[tuple[Any, dict[str, np.ndarray]]]:
  """(context signature, feeds) for a Classify/Regress ``Input`` that the export can score
  on its context path: an ExampleListWithContext sent to ``serving_default`` of an export
  with a ``context_candidates`` signature. None otherwise (the request runs flat, the
  context merged into each example)."""
  if inp.WhichOneof("kind") != "example_list_with_context" or sig.name != "serving_default":
    return None
  ctx_sig = servable.signatures.get(CONTEXT_SIGNATURE)
  if ctx_sig is None:
    return None
  wc = inp.example_list_with_context
  cand = np.empty(len(wc.examples), dtype=object)
  cand[:] = [e.SerializeToString() for e in wc.examples]
  ctx = np.empty(1, dtype=object)
  ctx[0] = wc.context.SerializeToString()
  feeds = {CONTEXT_INPUT: ctx, CANDIDATES_INPUT: cand}
  check_context_feeds(servable, ctx_sig.name, feeds, max_rows, wc.context)
  return ctx_sig, feeds


def split_context(examples: Sequence[Any], names: Sequence[str]
                  ) -> list[tuple[bytes, list[bytes], int]]:
  """Groups consecutive tf.Examples (protos or bytes) with equal values of the context
  features `names`: [(context example, candidate examples, index of the first)], the
  context holding the group's context features and each candidate the rest."""
  groups: list[tuple[bytes, list[bytes], int]] = []
  last = None
  for i, e in enumerate(examples):
    ex = example_pb2.Example.FromString(e) if isinstance(e, bytes) else e
    fmap = ex.features.feature
    key = tuple(fmap[n].SerializeToString() if n in fmap else None for n in names)
    cand = example_pb2.Example()
    cand.CopyFrom(ex)
    for n in names:
      if n in cand.features.feature:
        del cand.features.feature[n]
    if key != last:
      ctx = example_pb2.Example()
      for n in names:
        if n in fmap:
          ctx.features.feature[n].CopyFrom(fmap[n])
      groups.append((ctx.SerializeToString(), [], i))
      last = key
    groups[-1][1].append(cand.SerializeToString())
  return groups
