"""`ssr_tf bench memory`: Product-Key Memory scaling, examples/s and FLOPs/example as the
memory grows from 2^12 to 2^20 slots at fixed top_k (MSN: parameters grow, compute stays
nearly flat), and optionally test AUC of SSR with and without the memory at matched FLOPs.

Per size: the whole ranking model (embeddings -> ssr_msn backbone -> heads) on in-memory
synthetic batches (I/O excluded): inference and train-step examples/s (Adagrad, whose
IndexedSlices update touches only retrieved rows; `--adam` adds Adam, whose tf-keras sparse
path decays every moment row, i.e. O(slots) per step), plus the PKM layer alone split into
retrieval (query net + two-stage top-k), the first stage alone (sub-key scoring + top-k:
einsum + tf.math.top_k vs the fused PkmSubKeyTopK op) and the sparse gather (fused vs
tf.gather). Sizes are timed interleaved over `--repeats` rounds so load from other processes
hits every size alike; `*_examples_per_s` and the ratios use each case's best round (the
least-disturbed one, as timeit does), `median_examples_per_s` the median round.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from ssr_tf.bench import common
from ssr_tf.config import ModelConfig
from ssr_tf.layers.pkm import ProductKeyMemory, _fused_ok, pkm_flops, sparse_gather_sum_tf
from ssr_tf.models.ranker import backbone_flops, backbone_params, build_model

SSR = {"mode": "dynamic", "num_layers": 2, "num_views": 8, "view_dim": 32, "expanded_dim": 64}


def memory_entry(num_sub_keys: int, top_k: int, heads: int, key_dim: int, value_dim: int,
                 query_norm: str = "batch", overparam: int = 1) -> dict:
  return {"after_layer": 0, "query_from": "input", "gate": "sigmoid",
          "num_sub_keys": num_sub_keys, "key_dim": key_dim, "top_k": top_k,
          "value_dim": value_dim, "heads": heads, "query_norm": query_norm,
          "overparam": overparam}


def _timed(fn, arg_list, steps: int) -> float:
  """Seconds for `steps` calls of fn cycling through arg_list (results forced)."""
  start = time.perf_counter()
  out = None
  for i in range(steps):
    out = fn(arg_list[i % len(arg_list)])
  tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
  return time.perf_counter() - start


class _Sized:
  """One memory size: the ranking model, its compiled steps and the bare PKM layer."""

  def __init__(self, log2: int, spec, batches, args):
    n = 2 ** (log2 // 2)
    self.log2, self.batch = log2, int(tf.shape(batches[0][1]["click"])[0])
    tf.keras.utils.set_random_seed(0)
    mem = memory_entry(n, args.top_k, args.heads, args.key_dim, args.value_dim)
    self.model_cfg = ModelConfig(name="ssr_msn", embedding_dim=16,
                                 backbone={**SSR, "impl": args.impl, "memories": [mem]})
    self.model = build_model(spec, self.model_cfg)
    self.model.compile(optimizer=tf.keras.optimizers.Adagrad(0.01))
    self.infer = tf.function(lambda b: self.model(b[0], training=False))
    self.train = tf.function(self.model.train_step)
    self.adam = None
    if args.adam:
      self.adam_model = build_model(spec, self.model_cfg)
      self.adam_model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
      self.adam = tf.function(self.adam_model.train_step)
    pkm = self.model.backbone.memories[0]
    d_in = pkm.input_dim
    self.layer = ProductKeyMemory(n, args.key_dim, args.top_k, args.value_dim, heads=args.heads,
                                  query_norm="batch", impl=args.impl, track_usage=False, seed=0)
    rng = np.random.default_rng(log2)
    self.x = [tf.constant(rng.normal(size=(self.batch, d_in)).astype(np.float32))
              for _ in range(4)]
    self.layer(self.x[0])
    self.retrieve = tf.function(lambda x: self.layer.retrieve(x, training=False))
    ids, scores = self.retrieve(self.x[0])
    self.ids = [self.retrieve(x) for x in self.x]
    self.fused = _fused_ok(args.impl)
    if self.fused:
      from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
      gather = pkm_ops.sparse_gather_sum
    else:
      gather = sparse_gather_sum_tf
    self.gather = tf.function(
        lambda a: gather(self.layer.values, a[0], tf.nn.softmax(a[1], axis=-1)))
    self.gather_tf = tf.function(
        lambda a: sparse_gather_sum_tf(self.layer.values, a[0], tf.nn.softmax(a[1], axis=-1)))
    del ids, scores
    half, g = args.key_dim // 2, args.heads * 2
    self.q = [tf.reshape(self.layer.queries(x, training=False), [-1, g, half]) for x in self.x]
    keys = tf.reshape(self.layer.keys(), [g, n, half])
    ks = self.layer._ks  # pylint: disable=protected-access
    from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
    self.topk_tf = tf.function(lambda q: pkm_ops.sub_key_top_k_tf(q, keys, ks))
    self.topk_fused = (tf.function(lambda q: pkm_ops.sub_key_top_k(q, keys, ks))
                       if self.fused else None)
    self.batches = batches
    self.times: dict[str, list[float]] = {}
    # Trace and warm every function on every input (shapes may differ between batches).
    for _, fn, args_ in self._cases():
      _timed(fn, args_, len(args_))

  def _cases(self):
    cases = [("infer", self.infer, self.batches), ("train_adagrad", self.train, self.batches),
             ("pkm_retrieve", self.retrieve, self.x), ("pkm_gather", self.gather, self.ids),
             ("pkm_gather_tf", self.gather_tf, self.ids),
             ("subkey_topk_tf", self.topk_tf, self.q)]
    if self.topk_fused is not None:
      cases.append(("subkey_topk_fused", self.topk_fused, self.q))
    if self.adam is not None:
      cases.append(("train_adam", self.adam, self.batches))
    return cases

  def run_round(self, steps: int) -> None:
    for name, fn, args_ in self._cases():
      self.times.setdefault(name, []).append(_timed(fn, args_, steps) / steps)

  def result(self, args) -> dict:
    pkm = self.model.backbone.memories[0]
    flops = pkm_flops(pkm.input_dim, pkm.num_sub_keys, args.key_dim, args.top_k,
                      args.value_dim, args.heads)
    rates = {f"{k}_examples_per_s": round(self.batch / min(v), 1) for k, v in self.times.items()}
    median = {k: round(self.batch / statistics.median(v), 1) for k, v in self.times.items()}
    return {"slots": pkm.memory_size, "log2_slots": self.log2, "num_sub_keys": pkm.num_sub_keys,
            "backbone_params": backbone_params(self.model),
            "memory_params": int(np.prod(pkm.values.shape)),
            "backbone_flops_per_example": backbone_flops(self.model),
            "memory_flops_per_example": flops, **rates, "median_examples_per_s": median}


def scaling(args) -> dict:
  data_dir = common.ensure_data(args.data, args.rows)
  spec, batches = common.load_batches(data_dir, args.batch_size, 4)
  sizes = [_Sized(e, spec, batches, args) for e in args.log2_slots]
  if not args.data:
    shutil.rmtree(data_dir, ignore_errors=True)    # batches and models are built
  for _ in range(args.repeats):
    for s in sizes:
      s.run_round(args.steps)
  rows = [s.result(args) for s in sizes]
  first, last = rows[0], rows[-1]
  ratio = {"slots": last["slots"] / first["slots"],
           "params": round(last["backbone_params"] / first["backbone_params"], 2),
           "flops_per_example": round(last["backbone_flops_per_example"]
                                      / first["backbone_flops_per_example"], 4)}
  for key in first:
    if key.endswith("_examples_per_s") and key != "median_examples_per_s":
      # time per example, large vs small memory: 1.0 = perfectly flat compute
      ratio[key.replace("_examples_per_s", "_time_per_example")] = round(first[key] / last[key], 3)
  return {"batch": sizes[0].batch, "top_k": args.top_k, "heads": args.heads,
          "key_dim": args.key_dim, "value_dim": args.value_dim, "impl": args.impl,
          "fused_gather": sizes[0].fused, "steps": args.steps, "repeats": args.repeats,
          "sizes": rows, f"ratio_2^{args.log2_slots[-1]}_vs_2^{args.log2_slots[0]}": ratio}


# ---------------------------------------------------------------------------------------
# Quality: SSR with and without the memory at matched FLOPs.


def _ssr_flops(num_fields: int, dim: int, backbone: dict) -> int:
  from ssr_tf.models.ssr import SSRBackbone  # pylint: disable=import-outside-toplevel
  bb = SSRBackbone(**backbone)
  bb(tf.zeros([1, num_fields, dim]))
  return bb.flops_per_example(num_fields, dim)


def memory_usage(cfg) -> dict:
  """Utilisation of each memory of the trained (best) checkpoint: over the whole test split
  (slots hit by any test example, KL of test hits vs uniform) and the last training window
  stored in the checkpoint."""
  from ssr_tf import data as data_lib  # pylint: disable=import-outside-toplevel
  from ssr_tf import task  # pylint: disable=import-outside-toplevel
  from ssr_tf.layers.pkm import usage_stats  # pylint: disable=import-outside-toplevel
  spec, model = task.build(cfg)
  task.restore(model, cfg.train.model_dir)
  mems = [m for m, c in zip(model.backbone.memories, model.backbone.memory_cfgs)
          if c.query_from == "input"]
  counts = [np.zeros(m.memory_size, np.int64) for m in mems]
  examples = 0
  for features, _ in data_lib.make_dataset(cfg.data.test, spec, cfg.data.batch_size,
                                            training=False):
    fields = model.embedding(features)
    x0 = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])
    examples += int(x0.shape[0])
    for m, c in zip(mems, counts):
      c += np.bincount(m.retrieve(x0, training=False)[0].numpy().ravel(),
                       minlength=m.memory_size)
  out = {}
  for m, c in zip(mems, counts):
    used, kl = usage_stats(tf.constant(c, tf.float32))
    u = m.usage()
    out[m.name] = {"slots": m.memory_size, "test_examples": examples,
                   "test_slots_used": round(float(used), 4), "test_usage_kl": round(float(kl), 4),
                   "train_window_slots_used": round(u["last_slots_used"], 4),
                   "train_window_usage_kl": round(u["last_usage_kl"], 4)}
  return out


def quality(args) -> dict:
  from ssr_tf import evaluation, training  # pylint: disable=import-outside-toplevel
  from ssr_tf.config import DataConfig, ExperimentConfig, TrainConfig  # pylint: disable=import-outside-toplevel
  from ssr_tf.features import load_spec  # pylint: disable=import-outside-toplevel
  data_dir = common.ensure_data(args.quality_data, args.quality_rows, seed=1)
  spec = load_spec(str(data_dir / "spec.yaml"))
  fields, dim = len(spec.features), 16
  mem = memory_entry(2 ** (args.quality_log2_slots // 2), args.top_k, args.heads, args.key_dim,
                     args.value_dim)
  msn_cfg = ModelConfig(name="ssr_msn", embedding_dim=dim,
                        backbone={**SSR, "impl": args.impl, "memories": [mem]})
  msn_model = build_model(spec, msn_cfg)
  target = backbone_flops(msn_model)
  del msn_model
  # Widen SSR-D's expanded_dim until its FLOPs reach the memory model's.
  expanded, best = SSR["expanded_dim"], None
  for e in range(SSR["expanded_dim"], 8 * SSR["expanded_dim"] + 1, 8):
    f = _ssr_flops(fields, dim, {**SSR, "expanded_dim": e})
    if best is None or abs(f - target) < abs(best - target):
      expanded, best = e, f
  runs = {
      "ssr_msn": msn_cfg,
      "ssr_d_matched_flops": ModelConfig(name="ssr", embedding_dim=dim,
                                         backbone={**SSR, "expanded_dim": expanded,
                                                   "impl": args.impl}),
      "ssr_d_same_width": ModelConfig(name="ssr", embedding_dim=dim,
                                      backbone={**SSR, "impl": args.impl}),
  }
  if args.countermeasures:
    for name, norm, over in (("ssr_msn_no_norm", "none", 1), ("ssr_msn_layer_norm", "layer", 1),
                             ("ssr_msn_no_norm_overparam4", "none", 4),
                             ("ssr_msn_batch_norm_overparam4", "batch", 4)):
      variant = {**mem, "query_norm": norm, "overparam": over}
      runs[name] = ModelConfig(name="ssr_msn", embedding_dim=dim,
                               backbone={**SSR, "impl": args.impl, "memories": [variant]})
  out_root = pathlib.Path(tempfile.mkdtemp(prefix="ssr_tf_bench_memory_"))
  results = {}
  for name, model_cfg in runs.items():
    cfg = ExperimentConfig(
        data=DataConfig(**common.data_paths(data_dir), batch_size=args.batch_size),
        model=dataclasses.replace(model_cfg, pay_mode="esmm"),
        train=TrainConfig(model_dir=str(out_root / name), epochs=args.quality_epochs,
                          optimizer=args.quality_optimizer, early_stopping_patience=0,
                          verbose=0, seed=args.seed))
    cfg.validate()
    with contextlib.redirect_stdout(sys.stderr):   # stdout carries only this command's JSON
      state = training.train(cfg, overwrite=True)
      ev = evaluation.evaluate(cfg)
    click = ev["tasks"]["click"]
    results[name] = {"backbone_params": state["backbone"]["backbone_params"],
                     "backbone_flops_per_example": state["backbone"]["backbone_flops_per_example"],
                     "test_click_auc": round(click["auc"], 5),
                     "oracle_click_auc": round(click.get("oracle_auc", float("nan")), 5),
                     "train_seconds": state["seconds"]}
    if model_cfg.name == "ssr_msn":
      results[name]["memory_usage"] = memory_usage(cfg)
  shutil.rmtree(out_root, ignore_errors=True)
  if not args.quality_data:
    shutil.rmtree(data_dir, ignore_errors=True)
  return {"rows": args.quality_rows, "epochs": args.quality_epochs,
          "optimizer": args.quality_optimizer, "memory_slots": 2 ** args.quality_log2_slots,
          "matched_expanded_dim": expanded, "models": results}


def main(argv: list[str], prog: str = "ssr_tf bench memory") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--log2_slots", type=int, nargs="+", default=[12, 14, 16, 18, 20],
                 help="memory sizes as log2(slots); even numbers (slots = num_sub_keys**2)")
  p.add_argument("--top_k", type=int, default=16)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--key_dim", type=int, default=32)
  p.add_argument("--value_dim", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--steps", type=int, default=10, help="timed steps per size and round")
  p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
  p.add_argument("--impl", default="auto", choices=["tf", "fused", "auto"])
  p.add_argument("--adam", action="store_true", help="also time Adam train steps")
  p.add_argument("--data", default=None, help="data dir for the scaling batches")
  p.add_argument("--rows", type=int, default=8192, help="rows generated for the batches")
  p.add_argument("--quality", action="store_true",
                 help="also train SSR with/without memory at matched FLOPs; report test AUC")
  p.add_argument("--countermeasures", action="store_true",
                 help="with --quality: also train memories without query norm, with LayerNorm "
                      "and with over-parameterisation; report utilisation of each")
  p.add_argument("--quality_data", default=None)
  p.add_argument("--quality_rows", type=int, default=200_000)
  p.add_argument("--quality_epochs", type=int, default=3)
  p.add_argument("--quality_log2_slots", type=int, default=16)
  p.add_argument("--quality_optimizer", default="adam", choices=["adam", "adagrad"])
  p.add_argument("--seed", type=int, default=42)
  args = p.parse_args(argv)
  if any(e % 2 or not 4 <= e <= 30 for e in args.log2_slots):
    p.error("--log2_slots must be even numbers in [4, 30]")
  result = {"benchmark": "memory", "cpu_count": os.cpu_count(),
            "command": " ".join(["ssr_tf bench memory", *argv]),
            "scaling": scaling(args)}
  if args.quality:
    result["quality"] = quality(args)
  print(json.dumps(result, indent=2))
  return 0
