"""`ssr_tf bench ops`: fused ICS op vs composed TF vs XLA, as JSON (not a timed test).

For each batch B (V=8, D=128, T=5 by default) it times (best of >= 5 runs, median alongside) ICS forward, ICS forward+backward and a
full SSR-D layer train step (SSRLayer, d_in=256, d_v=64, E=128) for impl fused / tf / XLA
(tf under jit_compile), plus fwd+bwd of the SSR-D filter alone (x @ W then ICS). Effective GB/s = tensor bytes that must move / median time:
forward reads z and writes y (2 * B*V*D*4 bytes); backward also reads z, dy and writes dz
(+3). `memcpy_gbps` copies the same number of bytes (half read, half written) with numpy,
timed round robin with the kernels it is compared to (best of 1 and 2 threads); `vs_memcpy` = effective GB/s / memcpy GB/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

import ssr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from ssr_tf import ops
from ssr_tf.layers.ics import ics_tf


def _time_group(fns: dict[str, Callable[[], object]], min_time: float, warmup: int = 2,
                max_rounds: int = 300) -> dict[str, tuple[float, float]]:
  """{name: (best, median) ms}: the functions run round robin, one call each per round, for
  >= 5 rounds and >= min_time seconds per function, so load from other users of the shared
  cores hits all of them alike; the best run is the figure the ratios use."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  spent = 0.0
  while True:
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
    rounds = len(next(iter(times.values())))
    spent = min(sum(t) for t in times.values())
    if rounds >= max_rounds or (rounds >= 5 and spent >= min_time):
      break
  return {name: (1e3 * min(t), 1e3 * statistics.median(t)) for name, t in times.items()}


def _memcpy_fns(nbytes: int) -> dict[str, Callable[[], object]]:
  """Copies of nbytes/2 bytes (so nbytes move: half read, half written), 1 and 2 threads."""
  n = max(2, nbytes // 8)                      # float32 elements per buffer
  src = np.random.default_rng(0).random(n, dtype=np.float32)
  dst = np.empty_like(src)
  halves = [slice(0, n // 2), slice(n // 2, n)]
  pool = ThreadPoolExecutor(2)

  def two() -> None:
    list(pool.map(lambda s: np.copyto(dst[s], src[s]), halves))

  return {"memcpy_1thread": lambda: np.copyto(dst, src), "memcpy_2threads": two}


def _ics_fns(views: int, dim: int, iters: int, batch: int, seed: int):
  rng = np.random.default_rng(seed)
  z = tf.constant(rng.standard_normal((batch, views, dim), dtype=np.float32))
  dy = tf.constant(rng.standard_normal((batch, views, dim), dtype=np.float32))
  alpha = tf.constant(rng.uniform(0.05, 0.5, (views, iters)).astype(np.float32))
  gamma = tf.constant(rng.uniform(0.5, 1.5, (views, dim)).astype(np.float32))
  impls = {"fused": ops.ics, "tf": ics_tf, "xla": ics_tf}
  fwd, fwdbwd = {}, {}
  for name, f in impls.items():
    jit = name == "xla"

    def forward(z, a, g, f=f):
      return f(z, a, g)

    def both(z, a, g, dy, f=f):
      with tf.GradientTape() as tape:
        tape.watch([z, a, g])
        y = f(z, a, g)
      return tape.gradient(y, [z, a, g], output_gradients=dy)

    ff = tf.function(forward, jit_compile=jit)
    fb = tf.function(both, jit_compile=jit)
    fwd[name] = lambda ff=ff: ff(z, alpha, gamma).numpy()
    fwdbwd[name] = lambda fb=fb: [t.numpy() for t in fb(z, alpha, gamma, dy)]
  return fwd, fwdbwd


def _dynamic_view_fns(batch: int, d_in: int, views: int, dim: int, iters: int, seed: int):
  """fwd+bwd of the SSR-D filter: MatMul + fused ICS (default), the one-op SsrDynamicView,
  composed TF, XLA."""
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.standard_normal((batch, d_in), dtype=np.float32))
  w = tf.constant((rng.standard_normal((d_in, views, dim)) / np.sqrt(d_in)).astype(np.float32))
  alpha = tf.fill([views, iters], 0.1)
  gamma = tf.ones([views, dim])
  dy = tf.constant(rng.standard_normal((batch, views, dim), dtype=np.float32))

  def composed(x, w, a, g):
    z = tf.reshape(tf.matmul(x, tf.reshape(w, [d_in, views * dim])), [-1, views, dim])
    return ics_tf(z, a, g)

  impls = {"fused": ops.dynamic_view,
           "fused_single_op": lambda *a: ops.dynamic_view(*a, single_op=True),
           "tf": composed, "xla": composed}
  fns = {}
  for name, f in impls.items():
    def both(x, w, a, g, dy, f=f):
      with tf.GradientTape() as tape:
        tape.watch([x, w, a, g])
        y = f(x, w, a, g)
      return tape.gradient(y, [x, w, a, g], output_gradients=dy)
    fb = tf.function(both, jit_compile=name == "xla")
    fns[name] = lambda fb=fb: [t.numpy() for t in fb(x, w, alpha, gamma, dy)]
  return fns


def _ssr_step_fns(batch: int, d_in: int, views: int, view_dim: int, expanded: int, iters: int,
                  seed: int) -> dict[str, Callable[[], object]] | str:
  try:
    from ssr_tf.layers.ssr import SSRLayer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return f"SSRLayer unavailable: {e}"
  x = tf.constant(np.random.default_rng(seed).standard_normal((batch, d_in), dtype=np.float32))
  fns = {}
  for name in ("fused", "tf", "xla"):
    tf.keras.utils.set_random_seed(seed)
    layer = SSRLayer("dynamic", num_views=views, view_dim=view_dim, expanded_dim=expanded,
                     ics_iters=iters, impl="fused" if name == "fused" else "tf", seed=seed)
    layer.build(x.shape)
    opt = tf.keras.optimizers.SGD(1e-3)

    def step(x, layer=layer, opt=opt):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x, training=True)))
      grads = tape.gradient(loss, layer.trainable_variables)
      opt.apply_gradients(zip(grads, layer.trainable_variables))
      return loss

    fn = tf.function(step, jit_compile=name == "xla")
    fns[name] = lambda fn=fn: fn(x).numpy()
  return fns


def run(batches: list[int], views: int, dim: int, iters: int, d_in: int, view_dim: int,
        min_time: float, seed: int = 0, ssr: bool = True) -> dict:
  """All measurements as one JSON-able dict."""
  result = {
      "command": "ssr_tf bench ops " + " ".join(sys.argv[1:]) if sys.argv else "",
      "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "tf": tf.__version__, "intra_op_threads": tf.config.threading
                  .get_intra_op_parallelism_threads() or "default"},
      "shape": {"views": views, "dim": dim, "iters": iters},
      "ssr_layer": {"d_in": d_in, "view_dim": view_dim, "expanded_dim": dim, "mode": "dynamic"},
      "timing": ("implementations of a group run round robin, >= 5 rounds and >= min_time s "
                 "each; ms = best run, median_ms alongside; ratios use ms"),
      "load_avg_start": [round(x, 2) for x in os.getloadavg()],
      "rows": [],
  }
  for b in batches:
    n = b * views * dim * 4
    fwd, fwdbwd = _ics_fns(views, dim, iters, b, seed)
    row: dict = {"batch": b}
    for label, fns, nbytes in (("ics_fwd", fwd, 2 * n), ("ics_fwd_bwd", fwdbwd, 5 * n)):
      timed = _time_group({**fns, **_memcpy_fns(nbytes)}, min_time)
      mc = {k.split("_", 1)[1]: nbytes / (timed[k][0] * 1e-3) / 1e9
            for k in ("memcpy_1thread", "memcpy_2threads")}
      best = max(mc.values())
      entry: dict = {"bytes": nbytes, "memcpy_gbps": {k: round(v, 2) for k, v in mc.items()}}
      for name in fns:
        ms, med = timed[name]
        gbps = nbytes / (ms * 1e-3) / 1e9
        entry[name] = {"ms": round(ms, 3), "median_ms": round(med, 3), "gbps": round(gbps, 2),
                       "vs_memcpy": round(gbps / best, 3)}
      entry["fused_speedup_vs_tf"] = round(entry["tf"]["ms"] / entry["fused"]["ms"], 2)
      entry["fused_speedup_vs_xla"] = round(entry["xla"]["ms"] / entry["fused"]["ms"], 2)
      row[label] = entry
    if ssr:
      timed = _time_group(_dynamic_view_fns(b, d_in, views, dim, iters, seed), min_time)
      entry = {name: {"ms": round(ms, 3), "median_ms": round(med, 3)}
               for name, (ms, med) in timed.items()}
      entry["fused_speedup_vs_tf"] = round(entry["tf"]["ms"] / entry["fused"]["ms"], 2)
      row["dynamic_view_fwd_bwd"] = entry
      fns = _ssr_step_fns(b, d_in, views, view_dim, dim, iters, seed)
      if isinstance(fns, str):
        row["ssr_d_train_step"] = {"note": fns}
      else:
        entry = {name: {"ms": round(ms, 3), "median_ms": round(med, 3)}
                 for name, (ms, med) in _time_group(fns, min_time).items()}
        entry["fused_speedup_vs_tf"] = round(entry["tf"]["ms"] / entry["fused"]["ms"], 2)
        entry["fused_speedup_vs_xla"] = round(entry["xla"]["ms"] / entry["fused"]["ms"], 2)
        row["ssr_d_train_step"] = entry
    result["rows"].append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
  return result


def main(argv: list[str], prog: str = "ssr_tf bench ops") -> int:
  """Entry point of `ssr_tf bench ops`; prints the JSON report on stdout."""
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1024,4096,16384",
                      help="comma-separated batch sizes (default 1024,4096,16384)")
  parser.add_argument("--views", type=int, default=8)
  parser.add_argument("--dim", type=int, default=128, help="D of ICS = E of the SSR-D layer")
  parser.add_argument("--iters", type=int, default=5, help="T")
  parser.add_argument("--d-in", type=int, default=256, help="SSR-D layer input width")
  parser.add_argument("--view-dim", type=int, default=64, help="SSR-D d_v (fusion output)")
  parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
  parser.add_argument("--no-ssr", action="store_true", help="skip the SSR-D layer train step")
  parser.add_argument("--output", help="also write the JSON here")
  args = parser.parse_args(argv)
  if not ops.is_available():
    print(f"{prog}: error: fused op unavailable: {ops.load_error()}", file=sys.stderr)
    return 1
  batches = [int(b) for b in args.batches.split(",") if b.strip()]
  result = run(batches, args.views, args.dim, args.iters, args.d_in, args.view_dim,
               args.min_time, ssr=not args.no_ssr)
  result["command"] = " ".join([prog, *argv])
  text = json.dumps(result, indent=1)
  print(text)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
