"""What train, evaluate and export share: CLI config flags, model building, checkpoints."""
from __future__ import annotations

import argparse
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
  return spec, build_model(spec, cfg.model, cfg.train.seed)


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
