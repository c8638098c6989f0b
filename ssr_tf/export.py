"""`ssr_tf export`: a SavedModel that stock TF Serving loads (no custom ops by default).

Layout ``DIR/<version>/saved_model.pb``. Signatures:
  serving_default(examples: string[batch] serialized tf.Example) -> click_prob, pay_prob
  predict_raw(<one tensor per feature>) -> click_prob, pay_prob
and, when the spec marks context features (``context: true``, ssr_tf/context.py):
  context_candidates(context: string [] or [1], candidates: string[N]) -> click_prob, pay_prob
  context_features() -> one int64 scalar per context feature (names them in the metadata)
A model of a click-only data set (no pay label in its spec) outputs click_prob alone.
Each version also ships ``assets.extra/tf_serving_warmup_requests``: PredictionLog records
of real examples that TF Serving (``--enable_model_warmup``, its default) and ``ssr_tf
serve`` replay before the version takes traffic, so its first requests are not slow.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import tensorflow as tf

from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from ssr_tf import context as context_lib
from ssr_tf import data as data_lib
from ssr_tf import task
from ssr_tf.config import ExperimentConfig
from ssr_tf.errors import UserError
from ssr_tf.layers.embedding import raw_input_signature
from ssr_tf.serving.examples import split_context
from ssr_tf.serving.servable import WARMUP_FILE

WARMUP_BATCHES = (1, 32, 128)


class ServingModule(tf.Module):
  """Wraps the Keras model with the serving signatures (two, four with context features)."""

  def __init__(self, model, spec):
    super().__init__()
    self.model = model
    self._spec = spec
    context_lib.check_context_spec(spec)

  def serve_examples(self, examples):
    features = data_lib.parse_features(examples, self._spec)
    return self.predict(features)

  def predict(self, features):
    out = self.model(features, training=False)       # click_prob (, pay_prob)
    return {k: tf.identity(v, name=k) for k, v in out.items()}

  def signatures(self) -> dict:
    examples = tf.function(self.serve_examples).get_concrete_function(
        tf.TensorSpec([None], tf.string, name="examples"))
    raw = tf.function(lambda **features: self.predict(features)).get_concrete_function(
        **raw_input_signature(self._spec))
    sigs = {"serving_default": examples, "predict_raw": raw}
    if context_lib.context_names(self._spec):
      sigs[context_lib.SIGNATURE] = tf.function(self.serve_context).get_concrete_function(
          **context_lib.input_signature())
      sigs[context_lib.FEATURES_SIGNATURE] = tf.function(
          lambda: context_lib.features_outputs(self._spec)).get_concrete_function()
    return sigs

  def serve_context(self, context, candidates):
    """One context tf.Example and N candidates -> scores [N] (ssr_tf/context.py)."""
    out = context_lib.score_context_candidates(self.model, self._spec, context, candidates)
    return {k: tf.identity(v, name=k) for k, v in out.items()}


def next_version(output_dir: str) -> int:
  p = pathlib.Path(output_dir)
  versions = [int(c.name) for c in p.iterdir() if c.name.isdigit()] if p.is_dir() else []
  return max(versions, default=0) + 1


def warmup_examples(cfg: ExperimentConfig, count: int) -> list[bytes]:
  """Up to `count` serialized records of the test split (else validation, else training)."""
  for key in ("test", "valid", "train"):
    pattern = getattr(cfg.data, key)
    if pattern:
      files = data_lib.list_files(pattern, f"data.{key}")
      ds = tf.data.TFRecordDataset(files, compression_type=cfg.data.compression or None)
      records = [bytes(r) for r in ds.take(count).as_numpy_iterator()]
      if not records:
        raise UserError(f"export warm-up: data.{key} ({pattern}) holds no records")
      return records
  raise UserError("export warm-up needs records: data.test, data.valid and data.train are "
                  "all empty (or pass --warmup_batches '')")


def write_warmup(version_dir: pathlib.Path, examples: list[bytes], batches,
                 context: Sequence[str] = ()) -> None:
  """One serving_default PredictRequest per batch size (examples repeated when fewer),
  as TF Serving's warm-up file; with `context` features, also one context_candidates
  request per batch size (the first example's context, every example's candidate part)."""
  target = version_dir / WARMUP_FILE
  target.parent.mkdir(parents=True, exist_ok=True)

  def write(w, signature: str, inputs: dict) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.signature_name = signature
    for name, values in inputs.items():
      req.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
    w.write(log.SerializeToString())

  with tf.io.TFRecordWriter(str(target)) as w:
    for size in batches:
      rows = [examples[i % len(examples)] for i in range(size)]
      write(w, "serving_default", {"examples": rows})
      if context:
        ctx = split_context(rows[:1], context)[0][0]
        cands = [c for _, group, _ in split_context(rows, context) for c in group]
        write(w, context_lib.SIGNATURE, {context_lib.CONTEXT_INPUT: [ctx],
                                        context_lib.CANDIDATES_INPUT: cands})


def export_saved_model(model, spec, output_dir: str, version: Optional[int] = None,
                       warmup: Optional[list[bytes]] = None, batches=WARMUP_BATCHES) -> str:
  """Writes ``output_dir/<version>`` (with a warm-up file when `warmup` examples are
  given) and returns its path."""
  version = next_version(output_dir) if version is None else int(version)
  path = pathlib.Path(output_dir) / str(version)
  if path.exists():
    raise UserError(f"export version already exists: {path} (pick another --version)")
  module = ServingModule(model, spec)
  tmp = path.with_name(f".{version}.tmp")
  tf.saved_model.save(module, str(tmp), signatures=module.signatures())
  if warmup:
    write_warmup(tmp, warmup, batches, context_lib.context_names(spec))
  tmp.rename(path)     # TF Serving never sees a half-written version
  return str(path)


def _batch_sizes(text: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise UserError(f"--warmup_batches {text!r}: expected comma-separated batch sizes, "
                    "e.g. 1,32,128") from None
  if any(n < 1 for n in sizes):
    raise UserError(f"--warmup_batches {text!r}: batch sizes must be >= 1")
  return sizes


def main(argv: list[str], prog: str = "ssr_tf export") -> int:
  p = task.config_parser(prog, "Export a trained model as a TF Serving SavedModel.")
  p.add_argument("--output", required=True, help="model base path; writes OUTPUT/<version>")
  p.add_argument("--version", type=int, default=None, help="default: highest existing + 1")
  p.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: newest)")
  p.add_argument("--fused", action="store_true",
                 help="keep the fused custom op in the graph (the server must load "
                      "ssr_tf's op library); default exports the pure-TF graph")
  p.add_argument("--warmup_batches", default=",".join(map(str, WARMUP_BATCHES)),
                 help="batch sizes of the TF Serving warm-up requests written with the "
                      "export (real records of the test split); '' writes none")
  args = p.parse_args(argv)
  batches = _batch_sizes(args.warmup_batches)
  cfg = task.config_from_args(args)
  if cfg.model.name in ("ssr", "ssr_msn") or "impl" in cfg.model.backbone:
    cfg.model.backbone = {**cfg.model.backbone, "impl": "fused" if args.fused else "tf"}
  spec, model = task.build(cfg)
  ckpt = task.restore(model, cfg.train.model_dir, args.checkpoint)
  warmup = warmup_examples(cfg, max(batches)) if batches else None
  path = export_saved_model(model, spec, args.output, args.version, warmup, batches)
  print(json.dumps({"export": path, "checkpoint": ckpt, "fused": args.fused,
                    "signatures": ["serving_default", "predict_raw"] + (
                        [context_lib.SIGNATURE, context_lib.FEATURES_SIGNATURE]
                        if context_lib.context_names(spec) else []),
                    "outputs": [f"{t}_prob" for t in model.tasks],
                    "warmup_requests": len(batches)}))
  return 0
