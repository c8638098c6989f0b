"""`ssr_tf bench quality`: the paper's quality tables under one shared training protocol.

Every run is an `ssr_tf train` run (:func:`ssr_tf.training.train`, an ExperimentConfig and
a model_dir per run) scored like `ssr_tf evaluate` scores it. Every model sees the same
splits, the same embeddings (dim 16), the same optimizers (Adam; lazy Adam on the
embedding tables), batch 1024, the same maximum epochs and early stopping on validation
click AUC (the best checkpoint is scored); test and validation AUC / LogLoss are exact
(``ssr_tf.metrics``). Suites:

  table3    every backbone (Table 3): AUC, LogLoss mean +- std over seeds, params, FLOPs.
  ablation  SSR-D vs w/o sparse filtering, b=1, static, TopK-STE, Dropout (Table 4).
  ics       T in {1,2,5}, alpha_init in {0.01,0.1,0.5}, with/without gamma (Table 5).
  scaling   SSR-S, SSR-D, DNN, DCNv2, RankMixer at 4 sizes each (Figure 3), PNG.
  gap       the SSR-D vs DNN investigation grid (depth, residual, views, expanded_dim,
            learning rate, embedding L2, ICS init), see docs/reproduction.md.
  probe     why SSR-D trails on real data: head, LayerNorm variant, dropout, ICS init,
            views/depth at equal FLOPs, each baseline with the same lr/dropout trials.
  history   DNN, DCN-v2, SSR-D with no history, mean pooling, target attention and
            softmax target attention.
  real      DNN, DCN-v2, SSR-D, SSR-S on real data, as the paper trains them and with the
            recipe of configs/ssr_d.yaml; without --data it converts MovieLens
            ml-latest-small (--movielens) with pipelines/mappings/ml_latest_small.yaml.

Results go to ``--output`` as ``<suite>.json`` and ``<suite>.md`` (+ ``scaling.png``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import evaluation, synth, task, training
from ssr_tf.bench import common
from ssr_tf.callbacks import filtered_views
from ssr_tf.config import TASKS, DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from ssr_tf.errors import UserError
from ssr_tf.features import FeatureSpec, load_spec
from ssr_tf.schedules import DECAYS

SUITES = ("table3", "ablation", "ics", "scaling", "gap", "probe", "history", "real")
MOVIELENS_MAPPING = "mappings/ml_latest_small.yaml"    # in the ssr_tf.pipelines package
# Recorded in every run; runs of another trainer (the suites' own fit loop before it was
# replaced by ssr_tf.training) are never reused as identical computations.
TRAINER = "ssr_tf.training"


# ---------------------------------------------------------------------------------------
# The shared protocol.


@dataclasses.dataclass
class Protocol:
  """Training settings applied identically to every model of a suite.

  Each maps onto the run's ExperimentConfig (:func:`experiment`): `ssr_tf train` validates
  once per epoch, so one protocol epoch is `evals_per_epoch` training epochs of
  ceil(steps per pass / evals_per_epoch) steps each.

  Attributes:
    epochs: maximum passes over the training split (the same for every model).
    evals_per_epoch: validation points per epoch; the models here overfit within one or
      two epochs, so epoch-level checks would miss most peaks by a seed-dependent margin.
    patience: epochs without a validation-AUC gain before stopping (counted in
      validation points: patience * evals_per_epoch; train.early_stopping_patience).
    batch_size: examples per step (data.batch_size).
    learning_rate: the optimizers' learning rate (train.learning_rate).
    lr_decay: "none" (constant) or "cosine" / "linear" decay to 0 over the run
      (train.lr_decay).
    embedding_dim: width of every field embedding.
    embedding_l2: L2 on the embedding rows of each batch (model.embedding_l2).
    pay_mode: pay head mode ("esmm" as in the demo configs).
    train_eval_rows: training rows scored after training (the first in file order), for
      the train-vs-test gap; 0: all of them.
  """
  epochs: int = 6
  evals_per_epoch: int = 4
  patience: int = 1
  batch_size: int = 1024
  learning_rate: float = 1e-3
  lr_decay: str = "none"
  embedding_dim: int = 16
  embedding_l2: float = 0.0
  pay_mode: str = "esmm"
  train_eval_rows: int = 30000


@dataclasses.dataclass
class Split:
  """One split of a data folder: its shards and how many records they hold."""
  pattern: str
  rows: int


@dataclasses.dataclass
class Splits:
  data_dir: pathlib.Path
  spec: FeatureSpec
  train: Split
  valid: Split
  test: Split


def load_splits(data_dir: str | pathlib.Path) -> Splits:
  """Reads ``DIR/spec.yaml`` and counts the records of ``DIR/{train,valid,test}/*``
  (ssr_tf data synth/convert)."""
  d = pathlib.Path(data_dir)
  if not (d / "spec.yaml").is_file():
    raise UserError(f"--data {d}: no spec.yaml (write one with `ssr_tf data synth` or "
                    "`ssr_tf data convert`)")
  paths = common.data_paths(d)
  splits = {}
  for name in ("train", "valid", "test"):
    files = data_lib.list_files(paths[name], f"--data {name}")
    splits[name] = Split(paths[name], sum(data_lib.count_records(files, paths["compression"])))
  return Splits(d, load_spec(paths["spec"]), **splits)


def model_config(entry: dict, protocol: Protocol) -> ModelConfig:
  backbone = copy.deepcopy(entry.get("backbone", {}))
  if entry["name"] in ("ssr", "ssr_msn"):
    backbone.setdefault("impl", "tf")
  return ModelConfig(name=entry["name"], embedding_dim=protocol.embedding_dim,
                     embedding_l2=entry.get("embedding_l2", protocol.embedding_l2),
                     pay_mode=protocol.pay_mode, backbone=backbone)


def spec_variant(spec: FeatureSpec, change: dict) -> FeatureSpec:
  """The data set's spec with an entry's "features" change: {"drop": [glob, ...]} removes
  the matching features (e.g. "hist_*": no history), {"pooling": p} sets every sequence
  feature's pooling (side_of members follow their main sequence)."""
  unknown = set(change) - {"drop", "pooling"}
  if unknown:
    raise UserError(f"suite entry 'features': unknown keys {sorted(unknown)}")
  out = copy.deepcopy(spec)
  out.features = [f for f in out.features
                  if not any(fnmatch.fnmatch(f.name, g) for g in change.get("drop", ()))]
  for f in out.features:
    if "pooling" in change and f.type == "sequence" and not f.side_of:
      f.pooling = change["pooling"]
  return out


def experiment(splits: Splits, entry: dict, protocol: Protocol, seed: int,
               model_dir: pathlib.Path, ics_log_every: int = 0,
               spec_path: Optional[pathlib.Path] = None) -> ExperimentConfig:
  """The `ssr_tf train` config of one run: the protocol (with the entry's overrides) on
  the suite's data, deterministic reads (the same seed trains the same weights). An entry
  with a "features" change (spec_variant) reads the data through that spec, written to
  `spec_path`."""
  proto = dataclasses.replace(protocol, **entry.get("protocol", {}))
  steps_per_pass = math.ceil(splits.train.rows / proto.batch_size)
  evals = proto.evals_per_epoch
  paths = common.data_paths(splits.data_dir.resolve())
  if "features" in entry:
    spec_path.write_text(spec_variant(splits.spec, entry["features"]).to_yaml())
    paths["spec"] = str(spec_path)
  return ExperimentConfig(
      data=DataConfig(**paths, batch_size=proto.batch_size, deterministic=True),
      model=model_config(entry, proto),
      train=TrainConfig(model_dir=str(model_dir), epochs=proto.epochs * evals,
                        steps_per_epoch=math.ceil(steps_per_pass / evals),
                        learning_rate=proto.learning_rate, lr_decay=proto.lr_decay,
                        early_stopping_patience=proto.patience * evals, seed=seed,
                        verbose=0, ics_log_every_steps=ics_log_every))


class _Progress(tf.keras.callbacks.Callback):
  """One history record and log line per validation point (a training epoch)."""

  def __init__(self, evals_per_epoch: int, log: Callable[[str], None]):
    super().__init__()
    self.evals_per_epoch = evals_per_epoch
    self.log = log
    self.history: list[dict] = []
    self._start = time.time()

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.time()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    rec = {"epoch": round((epoch + 1) / self.evals_per_epoch, 3),
           "train_auc_running": float(logs["click_auc"]), "train_loss": float(logs["loss"]),
           "valid_auc": float(logs["val_click_auc"]),
           "valid_logloss": float(logs["val_click_loss"]),
           "seconds": round(time.time() - self._start, 1)}
    self.history.append(rec)
    self.log(f"    epoch {rec['epoch']:.2f}: train_auc {rec['train_auc_running']:.4f} "
             f"valid_auc {rec['valid_auc']:.4f} ({rec['seconds']}s)")


def scores(model, spec: FeatureSpec, cfg: ExperimentConfig, split: str,
           rows: int = 0) -> dict[str, float]:
  """`ssr_tf evaluate --split SPLIT`'s AUC and LogLoss per task (and the oracle's AUC) as
  ``{"click_auc": ..., "click_logloss": ..., "click_oracle_auc": ...}``; of the first
  `rows` rows when > 0."""
  arrays = evaluation.predict_split(model, spec, cfg, split)
  if rows:
    arrays = {k: v[:rows] for k, v in arrays.items()}
  out = {}
  for t, r in evaluation.score(arrays, has_group="group" in arrays).items():
    out[f"{t}_auc"], out[f"{t}_logloss"] = r["auc"], r["logloss"]
    if "gauc" in r:
      out[f"{t}_gauc"] = r["gauc"]
    if "oracle_auc" in r:
      out[f"{t}_oracle_auc"] = r["oracle_auc"]
  return {k: out[k] for t in TASKS
          for k in (f"{t}_auc", f"{t}_gauc", f"{t}_logloss", f"{t}_oracle_auc") if k in out}


def ics_sparsity(model, spec: FeatureSpec, cfg: ExperimentConfig,
                 rows: int = 4096) -> Optional[list[float]]:
  """Share of exact zeros in each SSR layer's filtered views on the first `rows`
  validation rows (None without SSR layers)."""
  ds = data_lib.make_dataset(cfg.data.valid, spec, rows, training=False, key="data.valid",
                               compression=cfg.data.compression)
  features = next(iter(ds))[0]
  views = filtered_views(model, features)
  if not views:
    return None
  return [float(np.mean(v.numpy() == 0.0)) for v in views]


def run_one(splits: Splits, entry: dict, protocol: Protocol, seed: int,
            save_dir: Optional[pathlib.Path] = None, log: Callable[[str], None] = print,
            ics_log_every: int = 0) -> dict:
  """Trains one model under the protocol with `ssr_tf train`; returns test metrics,
  history and cost.

  The run's model_dir is `save_dir` (kept: what `ssr_tf train` writes, e.g. config.yaml,
  the best checkpoint in ckpt/, TensorBoard logs with ICS sparsity under logs/ics every
  `ics_log_every` steps when > 0), else a temporary folder removed afterwards. Test,
  validation and training rows are scored with the best checkpoint, as `ssr_tf evaluate`
  scores them.
  """
  proto = dataclasses.replace(protocol, **entry.get("protocol", {}))
  model_dir = pathlib.Path(save_dir or tempfile.mkdtemp(prefix="ssr_tf_quality_"))
  spec_path = model_dir.parent / f"{model_dir.name}.spec.yaml"
  spec_path.parent.mkdir(parents=True, exist_ok=True)
  cfg = experiment(splits, entry, protocol, seed, model_dir,
                   ics_log_every if save_dir is not None else 0, spec_path)
  progress = _Progress(proto.evals_per_epoch, log)
  tf.keras.backend.clear_session()
  try:
    state = training.train(cfg, overwrite=True, callbacks=[progress])   # never a resumed run
    spec, model = task.build(cfg)
    task.restore(model, cfg.train.model_dir)           # the best checkpoint, as evaluate does
    valid, test = scores(model, spec, cfg, "valid"), scores(model, spec, cfg, "test")
    train = scores(model, spec, cfg, "train", proto.train_eval_rows)
    sparsity = ics_sparsity(model, spec, cfg)
  finally:
    if save_dir is None:
      shutil.rmtree(model_dir, ignore_errors=True)
      spec_path.unlink(missing_ok=True)
  history = progress.history
  result = {
      "seed": seed, "test": test, "train_click_auc": train["click_auc"],
      "valid_click_auc": valid["click_auc"],
      "best_epoch": history[int(np.argmax([h["valid_auc"] for h in history]))]["epoch"],
      "epochs_run": history[-1]["epoch"], "seconds": state["seconds"], "history": history,
      "backbone_params": state["backbone"]["backbone_params"],
      "backbone_flops": state["backbone"]["backbone_flops_per_example"],
      "protocol": dataclasses.asdict(proto), "data": str(splits.data_dir.resolve()),
      "trainer": TRAINER,
  }
  if sparsity is not None:
    result["ics_sparsity"] = sparsity
  if save_dir is not None:
    result["model_dir"], result["checkpoint"] = str(save_dir), state["checkpoint"]
  return result


# ---------------------------------------------------------------------------------------
# Model zoo and suites. An entry is {"name": backbone, "backbone": {...}} plus optional
# "embedding_l2" and "protocol" overrides (used only by the gap suite's protocol rows,
# which are always run for SSR-D and the DNN alike).

SSR_D = {"name": "ssr", "backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 8,
                                     "view_dim": 32, "expanded_dim": 64}}
SSR_S = {"name": "ssr", "backbone": {"mode": "static", "num_layers": 2, "num_views": 16,
                                     "view_dim": 64}}
DNN = {"name": "dnn", "backbone": {"hidden_units": [400, 400, 400]}}

TABLE3 = {
    "dnn": DNN,
    "deepfm": {"name": "deepfm", "backbone": {"hidden_units": [400, 400, 400]}},
    "dcnv2": {"name": "dcnv2", "backbone": {"num_cross_layers": 3, "structure": "stacked",
                                            "projection_dim": 128,
                                            "hidden_units": [256, 256]}},
    "autoint": {"name": "autoint", "backbone": {"num_layers": 3, "num_heads": 2,
                                                "head_dim": 16}},
    "autoint_plus": {"name": "autoint", "backbone": {"num_layers": 3, "num_heads": 2,
                                                     "head_dim": 16,
                                                     "hidden_units": [400, 400]}},
    "mmoe": {"name": "mmoe", "backbone": {"num_experts": 4, "expert_units": [256, 128],
                                          "tower_units": [64]}},
    "wukong": {"name": "wukong", "backbone": {"num_layers": 2, "num_fm_embeddings": 16,
                                              "num_lc_embeddings": 16, "fm_rank": 16,
                                              "fmb_units": [256],
                                              "hidden_units": [256, 128]}},
    "rankmixer": {"name": "rankmixer", "backbone": {"num_tokens": 8, "token_dim": 64,
                                                    "num_layers": 2, "ffn_mult": 4}},
    "ssr_s": SSR_S,
    "ssr_d": SSR_D,
}


def _variant(base: dict, **backbone) -> dict:
  out = copy.deepcopy(base)
  out["backbone"].update(backbone)
  return out


def _with(base: dict, **extra) -> dict:
  out = copy.deepcopy(base)
  out.update(extra)
  return out


# Table 4: each row changes exactly one thing of SSR-D.
ABLATION = {
    "ssr_d": SSR_D,
    "no_sparse_filter": _variant(SSR_D, filter="none"),
    "single_view_b1": _variant(SSR_D, num_views=1, view_dim=256, expanded_dim=512),
    "static_ssr_s": _variant(SSR_D, mode="static", expanded_dim=None),
    "topk_ste": _variant(SSR_D, filter="topk"),
    "dropout": _variant(SSR_D, filter="dropout", filter_rate=0.5),
}

# Table 5.
ICS = {
    "T1": _variant(SSR_D, ics_iters=1),
    "T2": _variant(SSR_D, ics_iters=2),
    "T5_alpha0.1": SSR_D,
    "alpha0.01": _variant(SSR_D, alpha_init=0.01),
    "alpha0.5": _variant(SSR_D, alpha_init=0.5),
    "no_gamma": _variant(SSR_D, use_gamma=False),
}


def _scaling() -> dict:
  """Figure 3: four sizes per family, backbone parameters from ~20-100K to ~2-3M."""
  out = {}
  for i, (b, dv) in enumerate([(4, 16), (8, 32), (16, 32), (16, 64)]):
    out[f"ssr_d/{i}"] = _variant(SSR_D, num_views=b, view_dim=dv, expanded_dim=2 * dv)
  for i, (b, dv) in enumerate([(8, 32), (16, 64), (32, 128), (64, 128)]):
    out[f"ssr_s/{i}"] = _variant(SSR_S, num_views=b, view_dim=dv)
  for i, u in enumerate([128, 256, 512, 1024]):
    out[f"dnn/{i}"] = {"name": "dnn", "backbone": {"hidden_units": [u, u, u]}}
    out[f"dcnv2/{i}"] = {"name": "dcnv2", "backbone": {
        "num_cross_layers": 3, "projection_dim": u // 4, "hidden_units": [u, u]}}
  for i, d in enumerate([16, 32, 64, 128]):
    out[f"rankmixer/{i}"] = {"name": "rankmixer", "backbone": {
        "num_tokens": 8, "token_dim": d, "num_layers": 2, "ffn_mult": 4}}
  return out


SCALING = _scaling()


def _gap() -> dict:
  """The SSR-D vs DNN investigation: one factor at a time from the demo SSR-D."""
  g = {
      "ssr_d": SSR_D,
      "dnn": DNN,
      # architecture of SSR-D
      "ssr_d/L1": _variant(SSR_D, num_layers=1),
      "ssr_d/L3": _variant(SSR_D, num_layers=3),
      "ssr_d/L2_residual": _variant(SSR_D, residual=True),
      "ssr_d/L3_residual": _variant(SSR_D, num_layers=3, residual=True),
      "ssr_d/b16": _variant(SSR_D, num_views=16),
      "ssr_d/b4_dv64": _variant(SSR_D, num_views=4, view_dim=64, expanded_dim=128),
      "ssr_d/e128": _variant(SSR_D, expanded_dim=128),
      "ssr_d/alpha0.5": _variant(SSR_D, alpha_init=0.5),
      "ssr_d/no_filter": _variant(SSR_D, filter="none"),
      # layer 1's fusion pre-activations have std ~0.03 (embeddings init at +-0.05), where
      # GELU is linear; ReLU is scale-free
      "ssr_d/relu": _variant(SSR_D, activation="relu"),
      "dcnv2": TABLE3["dcnv2"],
  }
  # protocol knobs: always for both models
  for tag, extra in (("lr3e-4", {"protocol": {"learning_rate": 3e-4}}),
                     ("lr3e-3", {"protocol": {"learning_rate": 3e-3}}),
                     ("l2_1e-4", {"embedding_l2": 1e-4}),
                     ("l2_1e-3", {"embedding_l2": 1e-3}),
                     ("l2_1e-2", {"embedding_l2": 1e-2}),
                     ("l2_1e-1", {"embedding_l2": 1e-1}),
                     ("lr1e-2", {"protocol": {"learning_rate": 1e-2}})):
    g[f"ssr_d/{tag}"] = _with(SSR_D, **extra)
    g[f"dnn/{tag}"] = _with(DNN, **extra)
  # combinations of the single-factor winners, at the learning rate that helped both models
  fast = {"protocol": {"learning_rate": 3e-3}}
  g["dcnv2/lr3e-3"] = _with(TABLE3["dcnv2"], **fast)
  g["ssr_d/lr3e-3+e128"] = _with(_variant(SSR_D, expanded_dim=128), **fast)
  g["ssr_d/lr3e-3+b16"] = _with(_variant(SSR_D, num_views=16), **fast)
  g["ssr_d/lr3e-3+no_filter"] = _with(_variant(SSR_D, filter="none"), **fast)
  g["ssr_d/lr3e-3+L1"] = _with(_variant(SSR_D, num_layers=1), **fast)
  g["ssr_d/lr3e-3+relu"] = _with(_variant(SSR_D, activation="relu"), **fast)
  return g


GAP = _gap()

# Real-data suites (data from `ssr_tf data convert --format interactions`, e.g. MovieLens
# with pipelines/mappings/ml_latest_small.yaml). "hist_*" are the behaviour-history
# features; the probe and real suites leave them out.
NO_HISTORY = {"features": {"drop": ["hist_*"]}}
DCNV2 = TABLE3["dcnv2"]


def _regularised(base: dict, rate: float) -> dict:
  """`base` with dropout `rate` on its hidden layers (DNN, DCN-v2) or views (SSR)."""
  return _variant(base, dropout=rate)


def _probe() -> dict:
  """Why SSR-D trails: one factor at a time from SSR-D, each baseline under the same
  learning-rate, decay and dropout trials (docs/reproduction.md, "SSR on real data")."""
  g = {}
  for name, base in (("dnn", DNN), ("dcnv2", DCNV2), ("ssr_d", SSR_D)):
    g[name] = base
    g[f"{name}/lr3e-3"] = _with(base, protocol={"learning_rate": 3e-3})
    g[f"{name}/drop0.2"] = _regularised(base, 0.2)
    g[f"{name}/l2_1e-4"] = _with(base, embedding_l2=1e-4)
    g[f"{name}/cos3e-3"] = _with(base, protocol={"learning_rate": 3e-3, "lr_decay": "cosine"})
    g[f"{name}/cos3e-3+drop0.2"] = _with(_regularised(base, 0.2),
                                         protocol={"learning_rate": 3e-3, "lr_decay": "cosine"})
  g.update({
      "ssr_d/tower128": _variant(SSR_D, tower_units=[128]),
      "ssr_d/ln_plain": _variant(SSR_D, layer_norm="view_plain"),
      "ssr_d/ln_block": _variant(SSR_D, layer_norm="view_block"),
      "ssr_d/alpha0.01": _variant(SSR_D, alpha_init=0.01),
      "ssr_d/b16_dv16": _variant(SSR_D, num_views=16, view_dim=16, expanded_dim=32),
      "ssr_d/L1_b16": _variant(SSR_D, num_layers=1, num_views=16),
      "ssr_s": SSR_S,
      "ssr_s/cos3e-3+drop0.2": _with(_regularised(SSR_S, 0.2),
                                     protocol={"learning_rate": 3e-3, "lr_decay": "cosine"}),
  })
  return {k: _with(v, **NO_HISTORY) for k, v in g.items()}


def _history() -> dict:
  """Behaviour histories: no history, mean pooling and DIN target attention (unnormalised
  and softmax-normalised) per model."""
  g = {}
  for name, base in (("dnn", DNN), ("dcnv2", DCNV2), ("ssr_d", SSR_D)):
    g[f"{name}/none"] = _with(base, **NO_HISTORY)
    g[f"{name}/mean"] = _with(base, features={"pooling": "mean"})
    g[f"{name}/attention"] = _with(base, features={"pooling": "attention"})
    g[f"{name}/attention_softmax"] = _with(base, features={"pooling": "attention_softmax"})
  return g


PROBE = _probe()
HISTORY = _history()

# The real-data table: DNN, DCN-v2, SSR-D and SSR-S as the paper trains them (Adam 1e-3,
# constant) and with the training recipe of configs/ssr_d.yaml (dropout 0.2, Adam 3e-3
# with cosine decay) applied to every model; no history features. The entries are the
# probe suite's, so runs of one are reused by the other in the same --output folder.
RECIPE = "cos3e-3+drop0.2"
REAL = {
    "dnn": PROBE["dnn"], f"dnn/{RECIPE}": PROBE[f"dnn/{RECIPE}"],
    "dcnv2": PROBE["dcnv2"], f"dcnv2/{RECIPE}": PROBE[f"dcnv2/{RECIPE}"],
    "ssr_d": PROBE["ssr_d"], f"ssr_d/{RECIPE}": PROBE[f"ssr_d/{RECIPE}"],
    "ssr_s": PROBE["ssr_s"], f"ssr_s/{RECIPE}": PROBE[f"ssr_s/{RECIPE}"],
}
SUITE_MODELS = {"table3": TABLE3, "ablation": ABLATION, "ics": ICS, "scaling": SCALING,
                "gap": GAP, "probe": PROBE, "history": HISTORY, "real": REAL}


# ---------------------------------------------------------------------------------------
# Running a suite, aggregating and reporting.


def _mean_std(xs: list[float]) -> tuple[float, float]:
  a = np.asarray(xs, dtype=np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(runs: list[dict]) -> dict[str, dict]:
  """Per model name: mean and std over seeds of the headline numbers."""
  by: dict[str, list[dict]] = {}
  for r in runs:
    by.setdefault(r["name"], []).append(r)
  out = {}
  for name, rs in by.items():
    row = {"seeds": sorted(r["seed"] for r in rs), "backbone_params": rs[0]["backbone_params"],
           "backbone_flops": rs[0]["backbone_flops"]}
    for key, get in (("click_auc", lambda r: r["test"]["click_auc"]),
                     ("click_logloss", lambda r: r["test"]["click_logloss"]),
                     ("pay_auc", lambda r: r["test"].get("pay_auc", float("nan"))),
                     ("train_click_auc", lambda r: r["train_click_auc"]),
                     ("valid_click_auc", lambda r: r["valid_click_auc"]),
                     ("best_epoch", lambda r: r["best_epoch"]),
                     ("seconds", lambda r: r["seconds"])):
      row[key], row[f"{key}_std"] = _mean_std([get(r) for r in rs])
    if all("ics_sparsity" in r for r in rs):
      per_layer = np.mean([r["ics_sparsity"] for r in rs], axis=0)
      row["ics_sparsity"] = [round(float(s), 4) for s in per_layer]
    row["oracle_click_auc"] = rs[0]["test"].get("click_oracle_auc")
    out[name] = row
  return out


def _fmt_n(n: float) -> str:
  for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= div:
      return f"{n / div:.2f}{unit}"
  return str(int(n))


def _pm(row: dict, key: str, digits: int = 4) -> str:
  return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def markdown(suite: str, agg: dict[str, dict], meta: dict) -> str:
  """The suite's Markdown table (plus the settings it ran with)."""
  lines = [f"### `{suite}`", "",
           f"Data `{meta['data']}` ({meta['rows']}), seeds {meta['seeds']}, protocol "
           f"{json.dumps(meta['protocol'])}; wall {meta['wall_minutes']:.0f} min on "
           f"{meta['cpu_count']} shared CPU cores.", ""]
  oracle = next((r["oracle_click_auc"] for r in agg.values() if r.get("oracle_click_auc")), None)
  if oracle:
    lines += [f"Oracle test click AUC (true probabilities): {oracle:.4f}.", ""]
  base = {"ablation": "ssr_d", "ics": "T5_alpha0.1", "gap": "ssr_d"}.get(suite)
  head = "| model | n | click AUC | click LogLoss | pay AUC |"
  sep = "|---|---|---|---|---|"
  if base:
    head += f" ΔAUC vs {base} (×10⁻²) |"
    sep += "---|"
  if suite == "gap":
    head += " ΔAUC vs dnn (×10⁻²) |"
    sep += "---|"
  if suite in ("ics", "ablation", "gap", "table3"):
    head += " ICS sparsity (per layer) |"
    sep += "---|"
  head += " train AUC | best epoch | params | FLOPs | s/run |"
  sep += "---|---|---|---|---|"
  lines += [head, sep]
  for name, r in agg.items():
    cells = [name, str(len(r["seeds"])), _pm(r, "click_auc"), _pm(r, "click_logloss"),
             f"{r['pay_auc']:.4f}"]
    if base:
      cells.append(f"{(r['click_auc'] - agg[base]['click_auc']) * 100:+.2f}"
                   if base in agg else "-")
    if suite == "gap":
      tag = name.split("/", 1)[1].split("+")[0] if "/" in name else ""
      dnn = f"dnn/{tag}" if f"dnn/{tag}" in agg else "dnn"    # same protocol knob
      cells.append(f"{(r['click_auc'] - agg[dnn]['click_auc']) * 100:+.2f} ({dnn})"
                   if dnn in agg and not name.startswith("dnn") else "-")
    if suite in ("ics", "ablation", "gap", "table3"):
      sp = r.get("ics_sparsity")
      cells.append(" / ".join(f"{s:.0%}" for s in sp) if sp else "-")
    cells += [f"{r['train_click_auc']:.4f}", f"{r['best_epoch']:.2f}",
              _fmt_n(r["backbone_params"]), _fmt_n(r["backbone_flops"]), f"{r['seconds']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_scaling(agg: dict[str, dict], path: pathlib.Path) -> Optional[str]:
  """AUC vs backbone parameters (log x), one line per family."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib missing (pip install 'ssr_tf[plot]'): no PNG written")
    return None
  families: dict[str, list] = {}
  for name, r in agg.items():
    families.setdefault(name.split("/")[0], []).append(
        (r["backbone_params"], r["click_auc"], r["click_auc_std"]))
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for fam, pts in sorted(families.items()):
    pts.sort()
    x, y, e = zip(*pts)
    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=fam)
  ax.set_xscale("log")
  ax.set_xlabel("backbone parameters (log scale)")
  ax.set_ylabel("test click AUC")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return str(path)


def _load_runs(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_key(entry: dict, protocol: dict, seed: int, data: str) -> str:
  """Identity of a run: the same key means the same computation (model, protocol, seed, data)."""
  entry = {k: v for k, v in entry.items() if k != "protocol"}
  return json.dumps([entry, protocol, seed, data], sort_keys=True)


def _effective(entry: dict, protocol: Protocol) -> dict:
  return dataclasses.asdict(dataclasses.replace(protocol, **entry.get("protocol", {})))


def _reusable(output: pathlib.Path) -> dict[str, tuple[str, dict]]:
  """Finished runs of every suite under `output`, by run_key (runs are deterministic on
  CPU for a given seed, so an identical run of another suite is reused, not repeated)."""
  index = {}
  for path in sorted(output.glob("*.runs.jsonl")):
    for r in _load_runs(path):
      if "protocol" in r and "data" in r and "entry" in r and r.get("trainer") == TRAINER:
        index[run_key(r["entry"], r["protocol"], r["seed"], r["data"])] = (path.stem, r)
  return index


def run_suite(suite: str, splits: Splits, protocol: Protocol, seeds: list[int],
              output: pathlib.Path, only: Optional[list[str]] = None,
              save_models: bool = False, fresh: bool = False) -> dict:
  """Trains every (model, seed) of `suite` not already in ``<suite>.runs.jsonl``."""
  models = SUITE_MODELS[suite]
  if only:
    unknown = [m for m in only if m not in models]
    if unknown:
      raise UserError(f"--models: {unknown} not in suite {suite!r}; choose from "
                      f"{sorted(models)}")
    models = {k: models[k] for k in only}                 # in the order given
  output.mkdir(parents=True, exist_ok=True)
  log_path = output / f"{suite}.runs.jsonl"
  if fresh and log_path.exists():
    log_path.unlink()
  runs = _load_runs(log_path)
  done = {(r["name"], r["seed"]) for r in runs}
  data = str(splits.data_dir.resolve())
  for name, entry in models.items():
    for seed in seeds:
      if (name, seed) in done:
        continue
      hit = _reusable(output).get(run_key(entry, _effective(entry, protocol), seed, data))
      if hit is not None:
        r = {**copy.deepcopy(hit[1]), "name": name, "entry": entry,
             "reused_from": hit[1].get("reused_from", hit[0].replace(".runs", ""))}
        print(f"[{suite}] {name} seed {seed}: reusing the identical run of "
              f"suite {r['reused_from']!r}", flush=True)
        with log_path.open("a") as f:
          f.write(json.dumps(r) + "\n")
        runs.append(r)
        continue
      print(f"[{suite}] {name} seed {seed}", flush=True)
      save_dir = output / "models" / suite / f"{name.replace('/', '_')}_s{seed}" \
          if save_models else None
      r = run_one(splits, entry, protocol, seed, save_dir=save_dir,
                  log=lambda s: print(s, flush=True), ics_log_every=50 if save_models else 0)
      r.update(name=name, entry=entry)
      print(f"[{suite}] {name} seed {seed}: test click AUC {r['test']['click_auc']:.4f} "
            f"(train {r['train_click_auc']:.4f}, best epoch {r['best_epoch']:.2f}, "
            f"{r['seconds']:.0f}s)", flush=True)
      with log_path.open("a") as f:
        f.write(json.dumps(r) + "\n")
      runs.append(r)
  # The report covers every run of the suite finished so far (all seeds, all models run
  # in this or earlier invocations), in the suite's order; the table shows n per row.
  order = list(SUITE_MODELS[suite])
  runs = [r for r in _load_runs(log_path) if r["name"] in order]
  agg = aggregate(sorted(runs, key=lambda r: (order.index(r["name"]), r["seed"])))
  stats_path = splits.data_dir / "stats.json"
  rows = json.loads(stats_path.read_text()) if stats_path.exists() else {}
  meta = {"suite": suite, "data": str(splits.data_dir),
          "rows": f"train {splits.train.rows}, valid {splits.valid.rows}, test "
                  f"{splits.test.rows} rows" + (f", synth mode {rows.get('mode')}"
                                                 if rows.get("mode") else ""),
          "seeds": sorted({r["seed"] for r in runs}), "protocol": dataclasses.asdict(protocol), "cpu_count": os.cpu_count(),
          "wall_minutes": sum(r["seconds"] for r in runs) / 60.0}
  result = {"meta": meta, "models": agg, "runs": runs}
  (output / f"{suite}.json").write_text(json.dumps(result, indent=2))
  md = markdown(suite, agg, meta)
  if suite == "scaling":
    png = plot_scaling(agg, output / "scaling.png")
    if png:
      md += f"\n![AUC vs parameters]({pathlib.Path(png).name})\n"
      result["png"] = png
  (output / f"{suite}.md").write_text(md)
  result["markdown"] = md
  return result


def ensure_data(data: Optional[str], rows: int, mode: str, output: pathlib.Path,
                seed: int = 0) -> pathlib.Path:
  """--data if given; else a synthetic set under OUTPUT/data_<mode>_<rows> (made once)."""
  if data:
    return pathlib.Path(data)
  d = output / f"data_{mode}_{rows}"
  stats = d / "stats.json"
  if stats.exists():
    s = json.loads(stats.read_text())
    if s.get("rows") == rows and s.get("mode") == mode:
      return d
  print(f"writing {rows} synthetic rows (mode {mode}) to {d}", flush=True)
  synth.write(synth.SynthConfig(rows=rows, seed=seed, mode=mode), str(d))
  return d


def movielens_data(source: pathlib.Path, output: pathlib.Path, split: str) -> pathlib.Path:
  """ml-latest-small (ratings.csv, movies.csv in `source`) converted once under OUTPUT."""
  from ssr_tf.pipelines import convert  # pylint: disable=import-outside-toplevel
  import yaml  # pylint: disable=import-outside-toplevel
  d = output / f"data_movielens_{split}"
  if (d / "spec.yaml").is_file():
    return d
  ratings, movies = source / "ratings.csv", source / "movies.csv"
  for f in (ratings, movies):
    if not f.is_file():
      raise UserError(f"--movielens {source}: no {f.name} (give the ml-latest-small folder)")
  from ssr_tf import pipelines  # pylint: disable=import-outside-toplevel
  mapping_file = pathlib.Path(pipelines.__file__).parent / MOVIELENS_MAPPING
  mapping = yaml.safe_load(mapping_file.read_text())
  mapping["items"]["path"] = str(movies.resolve())
  output.mkdir(parents=True, exist_ok=True)
  tmp = output / "ml_latest_small.mapping.yaml"
  tmp.write_text(yaml.safe_dump(mapping, sort_keys=False))
  print(f"converting {ratings} ({split} split) to {d}", flush=True)
  convert.main(["--format", "interactions", "--mapping", str(tmp), "--input", str(ratings),
                "--output", str(d), "--split", split])
  return d


def main(argv: list[str], prog: str = "ssr_tf bench quality") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--suite", required=True, choices=SUITES)
  p.add_argument("--data", default=None,
                 help="data dir from `ssr_tf data synth/convert` (default: generate)")
  p.add_argument("--rows", type=int, default=300_000, help="rows to generate without --data")
  p.add_argument("--movielens", default="../shared/data/public/ml-latest-small",
                 help="--suite real without --data: the ml-latest-small folder to convert")
  p.add_argument("--split", default="random", choices=["random", "time"],
                 help="--suite real without --data: the split of the conversion")
  p.add_argument("--mode", default=None, choices=["default", "saturating"],
                 help="synthetic mode without --data (default: saturating for the scaling "
                      "suite, else default)")
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per model")
  p.add_argument("--models", default=None, help="comma-separated subset of the suite")
  p.add_argument("--epochs", type=int, default=Protocol.epochs)
  p.add_argument("--patience", type=int, default=Protocol.patience)
  p.add_argument("--evals_per_epoch", type=int, default=Protocol.evals_per_epoch)
  p.add_argument("--learning_rate", type=float, default=Protocol.learning_rate)
  p.add_argument("--batch_size", type=int, default=Protocol.batch_size)
  p.add_argument("--lr_decay", default=Protocol.lr_decay, choices=list(DECAYS))
  p.add_argument("--output", default="benchmarks/quality", help="results folder")
  p.add_argument("--save_models", action="store_true",
                 help="keep each run's checkpoint + config.yaml (for ssr_tf analyze)")
  p.add_argument("--fresh", action="store_true",
                 help="discard earlier runs of this suite in --output (default: resume)")
  args = p.parse_args(argv)
  if min(args.seeds, args.epochs, args.patience, args.evals_per_epoch) < 1:
    p.error("--seeds, --epochs, --patience and --evals_per_epoch must be >= 1")
  output = pathlib.Path(args.output)
  mode = args.mode or ("saturating" if args.suite == "scaling" else "default")
  if args.suite == "real" and not args.data:
    data_dir = movielens_data(pathlib.Path(args.movielens), output, args.split)
  else:
    data_dir = ensure_data(args.data, args.rows, mode, output)
  splits = load_splits(data_dir)
  protocol = Protocol(epochs=args.epochs, patience=args.patience,
                      evals_per_epoch=args.evals_per_epoch,
                      learning_rate=args.learning_rate, batch_size=args.batch_size,
                      lr_decay=args.lr_decay)
  only = [m.strip() for m in args.models.split(",")] if args.models else None
  result = run_suite(args.suite, splits, protocol, list(range(args.seeds)), output, only,
                     save_models=args.save_models, fresh=args.fresh)
  print(result["markdown"])
  print(json.dumps({"json": str(output / f"{args.suite}.json"),
                    "markdown": str(output / f"{args.suite}.md"),
                    "png": result.get("png")}))
  return 0
