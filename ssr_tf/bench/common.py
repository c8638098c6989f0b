"""Helpers shared by benchmark commands: data on demand, timed training, JSON output."""
from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time

import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import synth
from ssr_tf import optimizers
from ssr_tf.config import ExperimentConfig, ModelConfig, TrainConfig
from ssr_tf.features import load_spec
from ssr_tf.models.ranker import backbone_flops, backbone_params, build_model

# The backbones compared by `bench train`, at the demo sizes.
MODELS = {
    "ssr_s": {"name": "ssr", "backbone": {"mode": "static", "num_layers": 2, "num_views": 8,
                                          "view_dim": 32}},
    "ssr_d": {"name": "ssr", "backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 8,
                                          "view_dim": 32, "expanded_dim": 64}},
    "dnn": {"name": "dnn", "backbone": {"hidden_units": [400, 400, 400]}},
}


def ensure_data(data_dir: str | None, rows: int, seed: int = 0) -> pathlib.Path:
  """`data_dir` if given, else a fresh synthetic data set of `rows` rows in a temp folder."""
  if data_dir:
    return pathlib.Path(data_dir)
  out = pathlib.Path(tempfile.mkdtemp(prefix="ssr_tf_bench_"))
  synth.write(synth.SynthConfig(rows=rows, seed=seed), str(out))
  return out


def data_paths(data_dir: str | pathlib.Path) -> dict[str, str]:
  """The `data:` keys for a folder written by `ssr_tf data synth` or a converter
  (DIR/spec.yaml, DIR/{train,valid,test}/*, compression GZIP for .gz shards):
  DataConfig(**data_paths(d), ...)."""
  d = pathlib.Path(data_dir)
  gzip = any(d.glob("train/*.gz"))
  return {"spec": str(d / "spec.yaml"), "train": str(d / "train/*"),
          "valid": str(d / "valid/*"), "test": str(d / "test/*"),
          "compression": "GZIP" if gzip else ""}


def model_config(entry: dict, impl: str = "tf") -> ModelConfig:
  backbone = dict(entry["backbone"])
  if entry["name"] == "ssr":
    backbone["impl"] = impl
  return ModelConfig(name=entry["name"], embedding_dim=16, backbone=backbone)


def train_rate(spec, model_cfg: ModelConfig, batches: list, steps: int,
               embedding_optimizer: str = "lazy_adam",
               checkpoint_dir: str | None = None) -> dict:
  """Examples/s of Keras train steps on in-memory batches (I/O excluded), after warm-up,
  through the optimizer `ssr_tf train` builds (train.optimizer adam at 1e-3); with
  `checkpoint_dir`, also the cost of one backup (see backup_cost)."""
  tf.keras.utils.set_random_seed(0)
  model = build_model(spec, model_cfg)
  model.compile(optimizer=optimizers.make_optimizer(
      ExperimentConfig(train=TrainConfig(embedding_optimizer=embedding_optimizer)), model))
  ds = tf.data.Dataset.from_tensor_slices(
      tf.nest.map_structure(lambda *t: tf.stack(t), *batches)).repeat()
  model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)         # trace + warm up
  start = time.perf_counter()
  model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
  seconds = time.perf_counter() - start
  batch = int(tf.shape(tf.nest.flatten(batches[0])[0])[0])
  out = {"examples_per_s": round(steps * batch / seconds, 1), "steps": steps, "batch": batch,
         "backbone_params": backbone_params(model),
         "backbone_flops_per_example": backbone_flops(model)}
  if checkpoint_dir:
    out.update(backup_cost(model, checkpoint_dir))
  return out


def backup_cost(model: tf.keras.Model, directory: str) -> dict:
  """Seconds and GiB of one training backup (model and optimizer, as BackupAndRestore
  writes it) into `directory`, which is removed afterwards."""
  start = time.perf_counter()
  tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
      str(pathlib.Path(directory) / "backup"))
  seconds = time.perf_counter() - start
  size = sum(p.stat().st_size for p in pathlib.Path(directory).rglob("*") if p.is_file())
  shutil.rmtree(directory, ignore_errors=True)
  return {"backup_s": round(seconds, 2), "backup_gib": round(size / 2**30, 3)}


def load_batches(data_dir: pathlib.Path, batch_size: int, count: int):
  spec = load_spec(str(data_dir / "spec.yaml"))
  ds = data_lib.make_dataset(str(data_dir / "train/*"), spec, batch_size, training=False)
  batches = [b for b, _ in zip(ds, range(count)) if int(tf.shape(b[1]["click"])[0]) == batch_size]
  return spec, batches


def emit(result: dict) -> int:
  print(json.dumps(result, indent=2))
  return 0
