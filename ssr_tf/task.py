"""What train, evaluate and export share: CLI config flags, model building, checkpoints."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Optional

import tensorflow as tf

from ssr_tf.config import ExperimentConfig, load_config
from ssr_tf.errors import DataError, UserError
from ssr_tf.features import FeatureSpec, load_spec
from ssr_tf.models.ranker import RankingModel, build_model

CKPT_SUBDIR = "ckpt"


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=description)
  p.add_argument("--config", required=True, help="experiment YAML")
  p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                 help="override a config value (repeatable), e.g. --set train.epochs=1")
  return p


def config_from_args(args) -> ExperimentConfig:
  return load_config(args.config, args.set)


def build_spec(cfg: ExperimentConfig) -> FeatureSpec:
  if not cfg.data.spec:
    raise UserError("config key 'data.spec' is empty: give the feature spec YAML")
  return load_spec(cfg.data.spec)


def build(cfg: ExperimentConfig) -> tuple[FeatureSpec, RankingModel]:
  spec = build_spec(cfg)
  return spec, build_model(spec, cfg.model)


def checkpoint_manager(model: RankingModel, model_dir: str,
                       optimizer: Optional[tf.keras.optimizers.Optimizer] = None):
  ckpt = tf.train.Checkpoint(model=model, **({"optimizer": optimizer} if optimizer else {}))
  return tf.train.CheckpointManager(ckpt, os.path.join(model_dir, CKPT_SUBDIR), max_to_keep=2)


def restore(model: RankingModel, model_dir: str, checkpoint: Optional[str] = None) -> str:
  """Loads model weights from `checkpoint` or the newest one under model_dir/ckpt."""
  path = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, CKPT_SUBDIR))
  if not path:
    raise UserError(f"no checkpoint under {pathlib.Path(model_dir) / CKPT_SUBDIR}: "
                    "train first, or pass --checkpoint")
  if not tf.io.gfile.exists(path + ".index"):
    raise UserError(f"checkpoint not found: {path}")
  tf.train.Checkpoint(model=model).read(path).expect_partial()
  return path


def checkpoint_path(source: str, key: str) -> str:
  """`source` as a checkpoint prefix: itself, or the newest checkpoint in source/ckpt or
  in source; a UserError naming config key `key` when there is none."""
  if tf.io.gfile.exists(source + ".index"):
    return source
  for folder in (os.path.join(source, CKPT_SUBDIR), source):
    found = tf.train.latest_checkpoint(folder) if tf.io.gfile.isdir(folder) else None
    if found:
      return found
  raise UserError(f"config key '{key}': no checkpoint at {source} (give a checkpoint prefix "
                  f"or the model_dir of a finished run, which holds {CKPT_SUBDIR}/)")


def _model_weight_keys(path: str) -> set[str]:
  """Checkpoint keys of the model's own weights (not its optimizer's)."""
  return {k for k in tf.train.load_checkpoint(path).get_variable_to_shape_map()
          if k.startswith("model/") and not k.startswith("model/optimizer/")
          and k.endswith("/.ATTRIBUTES/VARIABLE_VALUE")}


def warm_start(model: RankingModel, path: str, key: str) -> int:
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


def check_feature_rows(spec: FeatureSpec, path: str, key: str) -> None:
  """Refuses, naming `key` and the features, a warm start whose embedding rows would change
  meaning: a feature whose vocabulary (values or order), buckets or boundaries differ
  from those of the run that wrote checkpoint `path`. Checked when that run's model_dir
  (the parent of its ckpt/) holds feature_rows.json."""
  ckpt_dir = pathlib.Path(path).parent
  recorded = ckpt_dir.parent / FEATURE_ROWS_FILE if ckpt_dir.name == CKPT_SUBDIR else None
  if recorded is None or not recorded.is_file():
    return
  before = json.loads(recorded.read_text())
  changed = sorted(n for n, digest in feature_rows(spec).items()
                   if n in before and before[n] != digest)
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


def data_errors(fn):
  """Runs `fn()`, turning TF data errors into one-line DataErrors."""
  try:
    return fn()
  except tf.errors.DataLossError as e:
    raise DataError(f"corrupt TFRecord data: {e.message.splitlines()[0]}") from None
  except tf.errors.InvalidArgumentError as e:
    first = e.message.splitlines()[0]
    if "parse" in first.lower() or "Key:" in first or "Feature" in first:
      raise DataError(f"bad record: {first}") from None
    raise
