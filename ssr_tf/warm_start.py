"""Warm start (`train.warm_start_from`): a new run takes an earlier run's model weights.

Weights only, strictly matched both ways; the optimizer (moments, step, and with it the
learning-rate schedule) starts fresh. Each run records what its embedding rows stand for
(model_dir/feature_rows.json), so a vocabulary that kept its size but changed its values
or order is refused by name instead of silently shifting rows.
"""
from __future__ import annotations

import json
import pathlib

import tensorflow as tf

from ssr_tf.errors import UserError
from ssr_tf.features import FeatureSpec
from ssr_tf.models.ranker import RankingModel
from ssr_tf.task import CKPT_SUBDIR


def _model_weight_keys(path: str) -> set[str]:
  """Checkpoint keys of the model's own weights (not its optimizer's)."""
  return {k for k in tf.train.load_checkpoint(path).get_variable_to_shape_map()
          if k.startswith("model/") and not k.startswith("model/optimizer/")
          and "/.OPTIMIZER_SLOT/" not in k and k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}


def load_weights(model: RankingModel, path: str, key: str) -> int:
  """Loads every weight of `model` (not its optimizer) from checkpoint `path`; returns how
  many. Refuses, naming `key`, a checkpoint that lacks one of them, holds one with another
  shape, or holds model weights this model does not have."""
  # The model's children without its optimizer: the checkpoint's optimizer entries then
  # stay unmatched instead of being restored into this run's optimizer once it exists.
  children = {name: child for name, child in model._trackable_children().items()  # pylint: disable=protected-access
              if name != "optimizer"}
  view = tf.Module()
  for name, child in children.items():
    setattr(view, name, child)
  stored = _model_weight_keys(path)
  try:
    status = tf.train.Checkpoint(model=view).read(path).expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    first = str(e).splitlines()[0][:300]
    raise UserError(f"config key '{key}': checkpoint {path} does not fit this model: "
                    f"{first}") from None
  own = _logical_weights(model)
  if len(stored) != own:
    raise UserError(f"config key '{key}': checkpoint {path} holds {len(stored)} model "
                    f"weights, this model has {own}: it was trained with another model "
                    "config")
  return own


FEATURE_ROWS_FILE = "feature_rows.json"


def feature_rows(spec: FeatureSpec) -> dict[str, str]:
  """{feature: Feature.rows_digest()}; `ssr_tf train` writes it to model_dir."""
  return {f.name: f.rows_digest() for f in spec.features}


def check_feature_rows(rows: dict[str, str], path: str, key: str) -> None:
  """Refuses, naming `key` and the features, a warm start whose embedding rows would change
  meaning: a feature whose digest in `rows` (this run's feature_rows) differs from the one
  recorded by the run that wrote checkpoint `path` (vocabulary values or order, buckets or
  boundaries). Checked when that run's model_dir (the parent of its ckpt/) holds
  feature_rows.json."""
  ckpt_dir = pathlib.Path(path).parent
  recorded = ckpt_dir.parent / FEATURE_ROWS_FILE if ckpt_dir.name == CKPT_SUBDIR else None
  if recorded is None or not recorded.is_file():
    return
  before = json.loads(recorded.read_text())
  changed = sorted(n for n, digest in rows.items() if n in before and before[n] != digest)
  if changed:
    raise UserError(f"config key '{key}': the embedding rows of feature(s) {changed} stand "
                    f"for other values than in the run that wrote {path} (vocabulary, "
                    "buckets or boundaries changed); warm-start only with that run's "
                    "feature spec and vocabularies")


def _logical_weights(model: RankingModel) -> int:
  """How many weights `model` checkpoints: a table sharded over parameter servers
  (a ShardedVariable, whose parts model.variables lists one by one) counts once."""
  seen = set()
  for v in model.variables:
    container = getattr(v, "_sharded_container", None)   # set on each part by TF
    seen.add(id(container()) if container is not None else id(v))
  return len(seen)
