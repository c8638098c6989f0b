"""Python client for a TF Serving (or ``ssr_tf serve``) ranking server, and `ssr_tf score`.

:class:`RankingClient` wraps the official ``PredictionService`` / ``ModelService`` stubs::

  from ssr_tf.serving.client import RankingClient
  with RankingClient("127.0.0.1:8500", model_name="ssr") as c:
    scores = c.score_rows([{"user_id": 7, "item_id": 42, "query": "shoes"}])
    scores["click_prob"], scores["pay_prob"]      # float32 arrays, one value per row

``ssr_tf score --server HOST:PORT --input FILE`` scores a TFRecord of tf.Examples, a CSV
file with a header row, or JSON lines, and prints one ``click_prob<TAB>pay_prob`` line
per record (``click_prob`` alone for a model of a click-only data set, which has no
``pay_prob`` output). CSV / JSON values are typed by the model's ``predict_raw`` signature
(fetched with GetModelMetadata); multi-valued CSV cells separate values with ``|``.
``--saved_model DIR`` instead of ``--server`` scores the same way through an export on
disk, in-process (:mod:`ssr_tf.serving.local`).

Against an export with context features (its ``context_features`` signature names them),
:meth:`RankingClient.score_examples` sends each run of consecutive records with equal
context-feature values as one request: the context once and the candidates without it
(Predict on ``context_candidates``); ``--flat`` / ``use_context=False`` sends every record
whole to ``serving_default``. Both give the same scores.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import ssr_tf  # noqa: F401  (TF log level before TensorFlow loads)
import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from ssr_tf.errors import DataError, UserError, output_file
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.examples import OUTPUTS
from ssr_tf.serving.tensors import ServingError, ndarray_to_tensor, tensor_to_ndarray
ExampleLike = Union[bytes, example_pb2.Example]


class RankingClient(examples_lib.ExampleScorer):
  """Scores candidates against a model served with TF Serving's gRPC API.

  Args:
    target: ``host:port`` of the server.
    model_name: ModelSpec.name.
    version: pin a version (None = the latest the server has).
    timeout_s: per-call deadline.
    max_message_bytes: gRPC message limit of this channel.
    use_context: send context + candidates when the export declares context features.
  """

  def __init__(self, target: str, model_name: str = "ssr", version: Optional[int] = None,
               timeout_s: float = 10.0, max_message_bytes: int = 64 << 20,
               use_context: bool = True):
    self.target, self.model_name, self.version = target, model_name, version
    self.timeout_s = timeout_s
    self.use_context = use_context
    self.channel = grpc.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes)])
    self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
    self._types: Optional[dict[str, examples_lib.FeatureType]] = None
    self._signatures: Optional[dict[str, Any]] = None

  def close(self) -> None:
    self.channel.close()

  def _spec(self, spec, signature_name: str = "") -> None:
    spec.name = self.model_name
    if self.version is not None:
      spec.version.value = self.version
    if signature_name:
      spec.signature_name = signature_name

  # -- status / metadata ---------------------------------------------------------------
  def status(self) -> list[tuple[int, str]]:
    """[(version, state name)] from GetModelStatus, newest first."""
    req = get_model_status_pb2.GetModelStatusRequest()
    self._spec(req.model_spec)
    resp = self.models.GetModelStatus(req, timeout=self.timeout_s)
    state = get_model_status_pb2.ModelVersionStatus.State.Name
    return [(s.version, state(s.state)) for s in resp.model_version_status]

  def wait_until_available(self, timeout_s: float = 60.0) -> int:
    """Blocks until a version is AVAILABLE; returns it (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
      try:
        for version, state in self.status():
          if state == "AVAILABLE":
            return version
        last = "no version AVAILABLE yet"
      except grpc.RpcError as e:
        last = f"{e.code().name}: {e.details()}"
      time.sleep(0.2)
    raise TimeoutError(f"model {self.model_name} at {self.target} not available after "
                       f"{timeout_s:.0f} s ({last})")

  def signatures(self) -> dict[str, Any]:
    """{signature name: SignatureDef} from GetModelMetadata."""
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    self._spec(req.model_spec)
    resp = self.predictions.GetModelMetadata(req, timeout=self.timeout_s)
    smap = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(smap)
    return dict(smap.signature_def)

  def _cached_signatures(self) -> dict[str, Any]:
    if self._signatures is None:
      self._signatures = self.signatures()
    return self._signatures

  def output_names(self) -> list[str]:
    """The scores serving_default returns (GetModelMetadata, cached), click_prob first;
    UserError when it has no click_prob."""
    sig = self._cached_signatures().get("serving_default")
    names = [o for o in OUTPUTS if sig is not None and o in sig.outputs]
    if "click_prob" not in names:
      have = sorted(sig.outputs) if sig is not None else "no serving_default signature"
      raise UserError(f"server {self.target}: model {self.model_name} serving_default has no "
                      f"click_prob output ({have})")
    return names

  def feature_types(self) -> dict[str, examples_lib.FeatureType]:
    """Feature dtypes / list-ness from the ``predict_raw`` signature (cached)."""
    if self._types is None:
      sigs = self._cached_signatures()
      raw = sigs.get("predict_raw")
      if raw is None:
        raw = next((s for s in sigs.values()
                    if not (len(s.inputs) == 1 and "examples" in s.inputs)), None)
      self._types = examples_lib.feature_types(raw.inputs) if raw is not None else {}
    return self._types

  # -- scoring -------------------------------------------------------------------------
  def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = "serving_default"
              ) -> dict[str, np.ndarray]:
    """Predict with arbitrary named input arrays; returns {output: array}."""
    req = predict_pb2.PredictRequest()
    self._spec(req.model_spec, signature_name)
    for name, arr in inputs.items():
      ndarray_to_tensor(np.asarray(arr) if not isinstance(arr, list) else _as_array(arr),
                        req.inputs[name])
    resp = self.predictions.Predict(req, timeout=self.timeout_s)
    return {k: tensor_to_ndarray(k, v) for k, v in resp.outputs.items()}

  def context_features(self) -> list[str]:
    """The export's context features (GetModelMetadata, cached); [] without them."""
    return examples_lib.context_feature_names(self._cached_signatures())

  def score_examples(self, examples: Sequence[ExampleLike]) -> dict[str, np.ndarray]:
    """click_prob (/ pay_prob) for tf.Examples (protos or serialized bytes).

    With context features (and ``use_context``): one context + candidates request per
    run of consecutive examples with equal context values (:func:`context_groups`).
    """
    names = self.context_features() if self.use_context and examples else []
    groups = context_groups(examples, names) if names else None
    if not groups:
      data = [e if isinstance(e, bytes) else e.SerializeToString() for e in examples]
      return self.predict({"examples": _strings(data)})
    parts = [self.score_context(ctx, cands) for ctx, cands, _ in groups]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def score_context(self, context: ExampleLike, candidates: Sequence[ExampleLike]
                    ) -> dict[str, np.ndarray]:
    """click_prob (/ pay_prob) [N] for one context tf.Example and N candidates (Predict on
    ``context_candidates``; a candidate's own value of a context feature wins)."""
    ser = lambda e: e if isinstance(e, bytes) else e.SerializeToString()
    return self.predict({examples_lib.CONTEXT_INPUT: _strings([ser(context)]),
                         examples_lib.CANDIDATES_INPUT: _strings([ser(c) for c in candidates])},
                        signature_name=examples_lib.CONTEXT_SIGNATURE)

  def score_features(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """click_prob (/ pay_prob) from one array per feature (the ``predict_raw`` signature)."""
    return self.predict(features, signature_name="predict_raw")


# Batches whose runs of equal context values average fewer rows than this go flat: one
# request for the batch costs less than one request per run.
MIN_MEAN_RUN = 2.0


def context_groups(examples: Sequence[ExampleLike], names: Sequence[str]
                   ) -> Optional[list[tuple[bytes, list[bytes], int]]]:
  """Runs of consecutive examples with equal values of the context features `names`, as
  (context, candidates, first index) (see examples.split_context); None when the runs
  average fewer than MIN_MEAN_RUN examples (send the batch flat)."""
  groups = examples_lib.split_context(examples, names)
  return groups if len(examples) >= MIN_MEAN_RUN * len(groups) else None


def _strings(values: Sequence[bytes]) -> np.ndarray:
  arr = np.empty(len(values), dtype=object)
  arr[:] = list(values)
  return arr


def _as_array(values: list) -> np.ndarray:
  if values and isinstance(values[0], (bytes, str)):
    arr = np.empty(len(values), dtype=object)
    arr[:] = [v.encode() if isinstance(v, str) else v for v in values]
    return arr
  return np.asarray(values)


# -- input files -------------------------------------------------------------------------
def detect_format(path: str) -> str:
  """tfrecord / csv / jsonl from the file name (``.gz`` TFRecords allowed)."""
  name = path.lower().removesuffix(".gz")
  if name.endswith(".csv") or name.endswith(".tsv"):
    return "csv"
  if name.endswith((".jsonl", ".json", ".ndjson")):
    return "jsonl"
  return "tfrecord"


def read_records(path: str, fmt: str) -> Iterator[Union[bytes, dict]]:
  """Yields serialized tf.Examples (tfrecord) or {column: value} rows (csv, jsonl)."""
  if not os.path.isfile(path):
    raise DataError(f"--input {path}: file not found")
  if fmt == "tfrecord":
    import tensorflow as tf
    comp = "GZIP" if path.endswith(".gz") else ""
    try:
      for rec in tf.data.TFRecordDataset(path, compression_type=comp).as_numpy_iterator():
        yield bytes(rec)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      raise DataError(f"{path}: not a readable TFRecord file "
                      f"({e.message.splitlines()[0]})") from None
    return
  if fmt == "csv":
    with open(path, newline="") as f:
      dialect = "excel-tab" if path.lower().removesuffix(".gz").endswith(".tsv") else "excel"
      reader = csv.DictReader(f, dialect=dialect)
      if not reader.fieldnames:
        raise DataError(f"{path}: CSV needs a header row naming the features")
      for row in reader:
        yield {k: v for k, v in row.items() if k is not None and v is not None}
    return
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise DataError(f"{path}:{i}: not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise DataError(f"{path}:{i}: each line must be a JSON object of features")
      yield row


def _batches(items: Iterable, size: int) -> Iterator[list]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _open_scorer(args) -> examples_lib.ExampleScorer:
  if args.saved_model:
    from ssr_tf.serving.local import LocalScorer  # pylint: disable=import-outside-toplevel
    return LocalScorer(args.saved_model, args.version)
  return RankingClient(args.server, args.model_name, args.version, args.timeout,
                       use_context=not args.flat)


def _score_file(scorer: examples_lib.ExampleScorer, path: str, fmt: str, batch_size: int,
                names: Sequence[str], write: Callable[[list[float]], None]) -> int:
  """Scores every record of one input file, in batches, writing the scores `names` of each;
  returns how many. A batch the model rejects is named by file and record range."""
  types = scorer.feature_types() if fmt != "tfrecord" else None
  n = 0
  for batch in _batches(read_records(path, fmt), batch_size):
    if fmt == "tfrecord":
      exs = batch
    else:
      exs = [examples_lib.make_example(r, types or None, f"{path} record {n + i + 1}")
             for i, r in enumerate(batch)]
    where = f"{path} records {n + 1}-{n + len(exs)}"
    try:
      scores = scorer.score_examples(exs)
    except ServingError as e:                       # --saved_model
      raise DataError(f"{where}: {e.code.name}: {e.message}") from None
    except grpc.RpcError as e:                      # --server: a bad record, by name
      if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
        raise
      raise DataError(f"{where}: INVALID_ARGUMENT: {e.details()}") from None
    columns = [scores[name] for name in names]
    for i in range(len(exs)):
      write([float(c[i]) for c in columns])
    n += len(exs)
  return n


def input_files(pattern: str) -> list[str]:
  """The files of --input: one path, or every match of a glob pattern, sorted."""
  paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
  if not paths:
    raise DataError(f"--input {pattern}: no file matches")
  for path in paths:
    if not os.path.isfile(path):
      raise DataError(f"--input {path}: file not found")
  return paths


def main(argv: list[str], prog: str = "ssr_tf score") -> int:
  """Entry point of `ssr_tf score`: prints click_prob and pay_prob (click_prob alone for a
  click-only model) per input record."""
  p = argparse.ArgumentParser(prog=prog, description="Score files through a running server "
                              "(TF Serving or `ssr_tf serve`) or an export on disk.")
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument("--server", help="HOST:PORT of the gRPC server")
  where.add_argument("--saved_model", help="score in-process with this export: a SavedModel "
                     "directory or an `ssr_tf export` base (its highest version)")
  p.add_argument("--input", required=True, help="TFRecord of tf.Examples, CSV (header row) "
                 "or JSON lines; a glob pattern (quoted) scores every match in name order")
  p.add_argument("--format", choices=["auto", "tfrecord", "csv", "jsonl"], default="auto")
  p.add_argument("--model_name", default="ssr", help="served model name (--server)")
  p.add_argument("--version", type=int, default=None, help="default: the latest")
  p.add_argument("--batch_size", type=int, default=256, help="records per request")
  p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (--server)")
  p.add_argument("--output", default="-", help="file to write (default: stdout)")
  p.add_argument("--json", action="store_true", help="print JSON lines instead of TSV")
  p.add_argument("--flat", action="store_true",
                 help="--server, export with context features: send every record whole to "
                      "serving_default instead of one context + candidates request per run "
                      "of records with equal context-feature values")
  args = p.parse_args(argv)
  if args.batch_size < 1:
    p.error("--batch_size must be >= 1")
  paths = input_files(args.input)      # a missing input fails before the model loads
  if args.output != "-":
    output_file(args.output)
  source = args.server or args.saved_model
  out = sys.stdout

  names: list[str] = []

  def write(values: list[float]) -> None:
    if args.json:
      out.write(json.dumps(dict(zip(names, values))) + "\n")
    else:
      out.write("\t".join(f"{v:.6f}" for v in values) + "\n")

  n = 0
  try:
    with _open_scorer(args) as scorer:
      names = scorer.output_names()
      if args.output != "-":           # opened (and an old file replaced) once the model is up
        out = open(args.output, "w")
      if not args.json:
        out.write("\t".join(names) + "\n")
      for path in paths:
        fmt = detect_format(path) if args.format == "auto" else args.format
        n += _score_file(scorer, path, fmt, args.batch_size, names, write)
  except grpc.RpcError as e:
    raise UserError(f"server {source}: {e.code().name}: {e.details()}") from None
  finally:
    if out is not sys.stdout:
      out.close()
  print(f"scored {n} records from {len(paths)} file(s) matching {args.input} with {source}",
        file=sys.stderr)
  return 0
