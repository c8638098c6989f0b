"""`ssr_tf export`: a SavedModel that stock TF Serving loads (no custom ops by default).

Layout ``DIR/<version>/saved_model.pb``. Signatures:
  serving_default(examples: string[batch] serialized tf.Example) -> click_prob, pay_prob
  predict_raw(<one tensor per feature>) -> click_prob, pay_prob
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import task
from ssr_tf.errors import UserError
from ssr_tf.layers.embedding import raw_input_signature


class ServingModule(tf.Module):
  """Wraps the Keras model with the two serving signatures."""

  def __init__(self, model, spec):
    super().__init__()
    self.model = model
    self._spec = spec

  def serve_examples(self, examples):
    features = data_lib.parse_features(examples, self._spec)
    return self.predict(features)

  def predict(self, features):
    out = self.model(features, training=False)
    return {"click_prob": tf.identity(out["click_prob"], name="click_prob"),
            "pay_prob": tf.identity(out["pay_prob"], name="pay_prob")}

  def signatures(self) -> dict:
    examples = tf.function(self.serve_examples).get_concrete_function(
        tf.TensorSpec([None], tf.string, name="examples"))
    raw = tf.function(lambda **features: self.predict(features)).get_concrete_function(
        **raw_input_signature(self._spec))
    return {"serving_default": examples, "predict_raw": raw}


def next_version(output_dir: str) -> int:
  p = pathlib.Path(output_dir)
  versions = [int(c.name) for c in p.iterdir() if c.name.isdigit()] if p.is_dir() else []
  return max(versions, default=0) + 1


def export_saved_model(model, spec, output_dir: str, version: Optional[int] = None) -> str:
  """Writes ``output_dir/<version>`` and returns its path."""
  version = next_version(output_dir) if version is None else int(version)
  path = pathlib.Path(output_dir) / str(version)
  if path.exists():
    raise UserError(f"export version already exists: {path} (pick another --version)")
  module = ServingModule(model, spec)
  tmp = path.with_name(f".{version}.tmp")
  tf.saved_model.save(module, str(tmp), signatures=module.signatures())
  tmp.rename(path)     # TF Serving never sees a half-written version
  return str(path)


def main(argv: list[str], prog: str = "ssr_tf export") -> int:
  p = task.config_parser(prog, "Export a trained model as a TF Serving SavedModel.")
  p.add_argument("--output", required=True, help="model base path; writes OUTPUT/<version>")
  p.add_argument("--version", type=int, default=None, help="default: highest existing + 1")
  p.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: newest)")
  p.add_argument("--fused", action="store_true",
                 help="keep the fused custom op in the graph (the server must load "
                      "ssr_tf's op library); default exports the pure-TF graph")
  args = p.parse_args(argv)
  cfg = task.config_from_args(args)
  if cfg.model.name in ("ssr", "ssr_msn") or "impl" in cfg.model.backbone:
    cfg.model.backbone = {**cfg.model.backbone, "impl": "fused" if args.fused else "tf"}
  spec, model = task.build(cfg)
  ckpt = task.restore(model, cfg.train.model_dir, args.checkpoint)
  path = export_saved_model(model, spec, args.output, args.version)
  print(json.dumps({"export": path, "checkpoint": ckpt, "fused": args.fused,
                    "signatures": ["serving_default", "predict_raw"]}))
  return 0
