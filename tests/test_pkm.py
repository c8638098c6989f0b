"""ProductKeyMemory against a brute-force NumPy reference (every slot scored), the fused
sparse-gather op against tf.gather, utilisation metrics, MemoryGate, save/load."""
import math
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.layers.pkm import (MemoryGate, ProductKeyMemory, pkm_flops, sparse_gather_sum_tf,
                               usage_stats)

try:
  from ssr_tf.ops import pkm as pkm_ops
  FUSED = pkm_ops.is_available()
  FUSED_WHY = pkm_ops.load_error()
except ImportError as e:   # ops package missing entirely
  pkm_ops, FUSED, FUSED_WHY = None, False, str(e)
needs_fused = pytest.mark.skipif(not FUSED, reason=f"PKM op unavailable: {FUSED_WHY}")


# ---------------------------------------------------------------------------------------
# NumPy brute force: score all n**2 slots, exact top-k, softmax, weighted sum; hand backward.


def _np_queries(layer, x):
  w = (layer.query_kernel.numpy() if layer.overparam == 1
       else layer.query_kernel_a.numpy() @ layer.query_kernel_b.numpy())
  q = (x @ w + layer.query_bias.numpy()).reshape(len(x), layer.heads, 2, layer.key_dim // 2)
  if layer.query_norm == "layer":
    mu, var = q.mean(-1, keepdims=True), q.var(-1, keepdims=True)
    q = (q - mu) / np.sqrt(var + 1e-5) * layer.query_ln_scale.numpy() + \
        layer.query_ln_offset.numpy()
  return q


def _np_keys(layer):
  if layer.overparam == 1:
    return layer.sub_keys.numpy().astype(np.float64)
  return np.einsum("hcnm,hcmd->hcnd", layer.sub_keys.numpy(), layer.key_proj.numpy())


def brute_force(layer, x, grad_out=None):
  """Forward (and, with grad_out, the backward of sum(out * grad_out)) for norm none/layer.

  Returns out [B, D], ids [B, H, k], and a dict of gradients (values, keys, q) when asked."""
  x = x.astype(np.float64)
  q = _np_queries(layer, x)                      # [B, H, 2, half]
  keys = _np_keys(layer)                         # [H, 2, n, half]
  vals = layer.values.numpy().astype(np.float64)
  n, k = layer.num_sub_keys, layer.top_k
  b, h = len(x), layer.heads
  out = np.zeros([b, layer.value_dim])
  ids = np.zeros([b, h, k], np.int64)
  g_vals, g_keys, g_q = np.zeros_like(vals), np.zeros_like(keys), np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      s1, s2 = keys[hi, 0] @ q[bi, hi, 0], keys[hi, 1] @ q[bi, hi, 1]
      full = (s1[:, None] + s2[None, :]).reshape(n * n)           # slot i * n + j
      top = np.argsort(-full, kind="stable")[:k]
      e = np.exp(full[top] - full[top].max())
      w = e / e.sum()
      ids[bi, hi] = top
      out[bi] += w @ vals[top]
      if grad_out is not None:
        g = grad_out[bi]
        dw = vals[top] @ g
        ds = w * (dw - w @ dw)                                     # softmax backward
        for t, slot in enumerate(top):
          i, j = divmod(int(slot), n)
          g_vals[slot] += w[t] * g
          g_q[bi, hi, 0] += ds[t] * keys[hi, 0, i]
          g_q[bi, hi, 1] += ds[t] * keys[hi, 1, j]
          g_keys[hi, 0, i] += ds[t] * q[bi, hi, 0]
          g_keys[hi, 1, j] += ds[t] * q[bi, hi, 1]
  return out, ids, {"values": g_vals, "keys": g_keys, "q": g_q}


def _x(b=6, d=10, seed=0):
  return np.random.default_rng(seed).normal(size=(b, d)).astype(np.float32)


@pytest.mark.parametrize("norm,heads,overparam,sub_top_k", [
    ("none", 1, 1, None), ("layer", 2, 1, None), ("none", 2, 3, None), ("layer", 1, 1, 6)])
def test_forward_matches_full_scoring(norm, heads, overparam, sub_top_k):
  layer = ProductKeyMemory(num_sub_keys=8, key_dim=6, top_k=4, value_dim=5, heads=heads,
                           query_norm=norm, overparam=overparam, sub_top_k=sub_top_k, seed=1)
  x = _x()
  y = layer(x).numpy()
  ref, ids, _ = brute_force(layer, x)
  got_ids, scores = layer.retrieve(tf.constant(x))
  np.testing.assert_array_equal(np.sort(got_ids.numpy(), -1), np.sort(ids, -1))
  assert np.all(np.diff(scores.numpy(), axis=-1) <= 0)             # sorted descending
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  assert layer.memory_size == 64 and y.shape == (6, 5)


def test_leading_dims_are_kept():
  layer = ProductKeyMemory(8, 6, 4, 5, query_norm="none", seed=2)
  x = np.random.default_rng(0).normal(size=(2, 3, 10)).astype(np.float32)
  y = layer(x).numpy()
  np.testing.assert_allclose(y.reshape(6, 5), layer(x.reshape(6, 10)).numpy(), atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_gradients_match_hand_derived_backward(heads):
  layer = ProductKeyMemory(8, 6, 4, 5, heads=heads, query_norm="none", seed=3)
  x = _x()
  g = np.random.default_rng(1).normal(size=(6, 5))
  xt = tf.constant(x)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(layer(xt) * g)
  _, _, ref = brute_force(layer, x, grad_out=g)
  d_vals = tape.gradient(loss, layer.values)
  assert isinstance(d_vals, tf.IndexedSlices)
  np.testing.assert_allclose(tf.convert_to_tensor(d_vals).numpy(), ref["values"], atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss, layer.sub_keys).numpy(), ref["keys"],
                             atol=1e-5)
  dq = ref["q"].reshape(6, -1)                                    # [B, H * key_dim]
  w = layer.query_kernel.numpy()
  np.testing.assert_allclose(tape.gradient(loss, layer.query_kernel).numpy(), x.T @ dq,
                             atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss, layer.query_bias).numpy(), dq.sum(0),
                             atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss, xt).numpy(), dq @ w.T, atol=1e-5)


def test_value_gradient_and_update_touch_only_retrieved_rows():
  layer = ProductKeyMemory(16, 8, 3, 4, heads=2, query_norm="none", seed=4)
  x = _x(b=5, d=12)
  layer(x)                                                   # build
  v0 = layer.values.numpy().copy()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) ** 2)
  ids, _ = layer.retrieve(tf.constant(x))
  grad = tape.gradient(loss, layer.values)
  assert isinstance(grad, tf.IndexedSlices)
  hit = set(ids.numpy().ravel().tolist())
  assert set(grad.indices.numpy().tolist()) == hit
  assert grad.values.shape[0] == 5 * 2 * 3                   # batch * heads * k rows, no more
  tf.keras.optimizers.SGD(0.1).apply_gradients([(grad, layer.values)])
  changed = np.nonzero(np.any(layer.values.numpy() != v0, axis=1))[0]
  assert set(changed.tolist()) <= hit and 0 < len(changed) <= 5 * 2 * 3   # of 256 slots


# ---------------------------------------------------------------------------------------
# The fused op.


@needs_fused
@pytest.mark.parametrize("idx_dtype", [tf.int32, tf.int64])
def test_fused_op_matches_tf_gather(idx_dtype):
  rng = np.random.default_rng(5)
  values = tf.Variable(rng.normal(size=(50, 7)).astype(np.float32))
  idx = tf.constant(rng.integers(0, 50, size=(4, 3, 5)), idx_dtype)
  w = tf.constant(rng.random((4, 3, 5)).astype(np.float32))
  g = tf.constant(rng.normal(size=(4, 3, 7)).astype(np.float32))
  outs, grads = [], []
  for fn in (pkm_ops.sparse_gather_sum_fused, sparse_gather_sum_tf):
    with tf.GradientTape() as tape:
      tape.watch(w)
      out = fn(values, idx, w)
      loss = tf.reduce_sum(out * g)
    d_vals, d_w = tape.gradient(loss, [values, w])
    assert isinstance(d_vals, tf.IndexedSlices)
    outs.append(out.numpy())
    grads.append((tf.convert_to_tensor(d_vals).numpy(), d_w.numpy()))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)


@needs_fused
def test_fused_op_numeric_gradient():
  rng = np.random.default_rng(6)
  values = tf.constant(rng.normal(size=(9, 3)))
  idx = tf.constant([[0, 4, 4], [8, 1, 2]], tf.int32)          # repeated slot in row 0
  w = tf.constant(rng.random((2, 3)))
  f = lambda v, ww: pkm_ops.sparse_gather_sum_fused(v, idx, ww)   # noqa: E731
  theoretical, numerical = tf.test.compute_gradient(f, [values, w])
  for t, n in zip(theoretical, numerical):
    np.testing.assert_allclose(t, n, atol=1e-6)


@needs_fused
def test_fused_op_rejects_out_of_range_ids():
  values = tf.zeros([4, 2])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0,1\] = 4 is not in"):
    pkm_ops.sparse_gather_sum_fused(values, tf.constant([[0, 4]]), tf.constant([[0.5, 0.5]]))


@needs_fused
def test_fused_sub_key_top_k_matches_einsum_top_k():
  rng = np.random.default_rng(10)
  q = tf.constant(rng.normal(size=(7, 4, 5)).astype(np.float32))       # [R, G, D]
  keys = tf.constant(rng.normal(size=(4, 37, 5)).astype(np.float32))   # [G, n, D], n odd
  g = tf.constant(rng.normal(size=(7, 4, 6)).astype(np.float32))
  res = []
  for fn in (pkm_ops.sub_key_top_k, pkm_ops.sub_key_top_k_tf):
    with tf.GradientTape() as tape:
      tape.watch([q, keys])
      vals, idx = fn(q, keys, 6)
      loss = tf.reduce_sum(vals * g)
    res.append((vals.numpy(), idx.numpy(), *[t.numpy() for t in tape.gradient(loss, [q, keys])]))
  np.testing.assert_array_equal(res[0][1], res[1][1])
  for a, b in zip(res[0][0:1] + res[0][2:], res[1][0:1] + res[1][2:]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_fused
def test_fused_sub_key_top_k_ties_and_numeric_gradient():
  keys = tf.constant([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]], tf.float64)   # 0 == 2
  vals, idx = pkm_ops.sub_key_top_k(tf.constant([[[1.0, 0.2]]], tf.float64), keys, 3)
  np.testing.assert_array_equal(idx.numpy(), [[[0, 2, 3]]])          # tie: lower index first
  np.testing.assert_allclose(vals.numpy(), [[[1.0, 1.0, 0.6]]])
  rng = np.random.default_rng(11)
  q = tf.constant(rng.normal(size=(3, 2, 4)))
  k = tf.constant(rng.normal(size=(2, 9, 4)))
  f = lambda qq, kk: pkm_ops.sub_key_top_k(qq, kk, 3)[0]   # noqa: E731
  theoretical, numerical = tf.test.compute_gradient(f, [q, k])
  for t, n in zip(theoretical, numerical):
    np.testing.assert_allclose(t, n, atol=1e-6)


@needs_fused
def test_layer_fused_equals_tf_impl():
  kw = dict(num_sub_keys=8, key_dim=6, top_k=4, value_dim=5, heads=2, query_norm="layer", seed=7)
  a, b = ProductKeyMemory(impl="tf", **kw), ProductKeyMemory(impl="fused", **kw)
  x = _x()
  a(x), b(x)
  b.set_weights(a.get_weights())
  with tf.GradientTape(persistent=True) as tape:
    ya, yb = a(x), b(x)
    la, lb = tf.reduce_sum(ya ** 2), tf.reduce_sum(yb ** 2)
  np.testing.assert_allclose(ya.numpy(), yb.numpy(), rtol=1e-6, atol=1e-6)
  for va, vb in zip(a.trainable_weights, b.trainable_weights):
    ga, gb = tape.gradient(la, va), tape.gradient(lb, vb)
    np.testing.assert_allclose(tf.convert_to_tensor(ga).numpy(), tf.convert_to_tensor(gb).numpy(),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Utilisation metrics.


def test_usage_stats_on_known_patterns():
  used, kl = usage_stats(tf.constant([3.0, 3.0, 3.0, 3.0]))       # uniform
  assert float(used) == 1.0 and abs(float(kl)) < 1e-6
  used, kl = usage_stats(tf.constant([5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
  assert float(used) == 0.25 and abs(float(kl) - math.log(4)) < 1e-6   # log(N / M)
  used, kl = usage_stats(tf.constant([2.0, 1.0, 1.0, 0.0]))        # p = .5, .25, .25, 0
  assert float(used) == 0.75 and abs(float(kl) - 0.5 * math.log(2)) < 1e-6
  used, kl = usage_stats(tf.zeros([4]))
  assert float(used) == 0.0 and float(kl) == 0.0


def test_usage_window_counts_hits_and_reports_metrics():
  layer = ProductKeyMemory(8, 6, 2, 3, query_norm="none", usage_window=8, seed=8)
  x1, x2 = _x(b=5, seed=1), _x(b=5, seed=2)
  layer(x1, training=True)
  ids1 = layer.retrieve(tf.constant(x1))[0].numpy().ravel()
  counts = np.bincount(ids1, minlength=64).astype(np.float32)
  np.testing.assert_array_equal(layer.slot_counts.numpy(), counts)
  u = layer.usage()
  assert u["slots_used"] == pytest.approx((counts > 0).mean()) and u["windows_done"] == 0
  metrics = {m.name: float(m.result()) for m in layer.metrics}   # running window, incremental
  used, kl = usage_stats(tf.constant(counts))
  assert metrics[f"{layer.name}_slots_used"] == pytest.approx(float(used))
  assert metrics[f"{layer.name}_usage_kl"] == pytest.approx(float(kl), abs=1e-6)
  layer(x2, training=True)                                      # 10 >= 8 examples: window closes
  ids2 = layer.retrieve(tf.constant(x2))[0].numpy().ravel()
  counts += np.bincount(ids2, minlength=64)
  used, kl = usage_stats(tf.constant(counts))
  u = layer.usage()
  assert u["windows_done"] == 1 and u["window_examples"] == 0 and u["slots_used"] == 0
  assert u["last_slots_used"] == pytest.approx(float(used))
  assert u["last_usage_kl"] == pytest.approx(float(kl), abs=1e-6)
  names = {m.name for m in layer.metrics}
  assert {f"{layer.name}_slots_used", f"{layer.name}_usage_kl"} <= names
  layer(x1)                                                     # inference: counts untouched
  assert layer.slot_counts.numpy().sum() == 0


# ---------------------------------------------------------------------------------------
# Arguments, config, save/load, gate.


@pytest.mark.parametrize("kwargs,match", [
    (dict(key_dim=5), "key_dim must be even"),
    (dict(query_norm="group"), "query_norm must be one of"),
    (dict(top_k=17, sub_top_k=4), "top_k must be <= sub_top_k"),
    (dict(sub_top_k=9), r"sub_top_k .* must be in \[1, num_sub_keys=8\]"),
    (dict(heads=0), "heads must be >= 1"),
    (dict(impl="cuda"), "impl must be one of"),
])
def test_bad_arguments_raise(kwargs, match):
  args = {**dict(num_sub_keys=8, key_dim=6, top_k=4, value_dim=5), **kwargs}
  with pytest.raises(ValueError, match=match):
    ProductKeyMemory(**args)


def test_left_out_arguments_take_the_memory_config_defaults(monkeypatch):
  import dataclasses
  from ssr_tf.models.ssr import SSRBackboneConfig
  from ssr_tf.models.ssr_msn import MemoryConfig
  cfg = ProductKeyMemory(8, 6, 4, 5).get_config()
  mem = {f.name: f for f in dataclasses.fields(MemoryConfig)}
  for key in ("heads", "query_norm", "sub_top_k", "overparam", "track_usage", "usage_window"):
    assert cfg[key] == mem[key].default, key
  assert cfg["impl"] == SSRBackboneConfig.impl == "auto"     # the backbone's impl key
  monkeypatch.setattr(mem["usage_window"], "default", 128)  # one place: the layer follows
  assert ProductKeyMemory(8, 6, 4, 5).usage_window == 128


def test_memory_gate_hand_values_and_errors():
  h, m = tf.ones([2, 3]), tf.ones([2, 2])
  sig = MemoryGate("sigmoid", kernel_initializer="ones")([h, m])   # z = 2
  np.testing.assert_allclose(sig.numpy(), np.full([2, 3], 2.0 / (1.0 + math.exp(-2.0))),
                             rtol=1e-6)
  add = MemoryGate("add", kernel_initializer="ones")([h, m])
  np.testing.assert_allclose(add.numpy(), np.full([2, 3], 3.0))
  with pytest.raises(ValueError, match="gate must be one of"):
    MemoryGate("mul")
  cfg = MemoryGate("add", scale=3.0).get_config()
  assert MemoryGate.from_config(cfg).get_config() == cfg


def test_flops_grow_only_through_scoring():
  small = pkm_flops(64, 64, 32, 16, 32)
  big = pkm_flops(64, 1024, 32, 16, 32)
  assert big["total"] - small["total"] == big["scoring"] - small["scoring"] == 2 * 960 * 32


def _model(layer_kwargs):
  inp = tf.keras.Input([10])
  h = tf.keras.layers.Dense(4)(inp)
  mem = ProductKeyMemory(**layer_kwargs, name="pkm")(inp)
  out = MemoryGate("sigmoid", name="gate")([h, mem])
  return tf.keras.Model(inp, tf.keras.layers.Dense(1)(out))


def test_config_round_trip_and_saved_model(tmp_path):
  kw = dict(num_sub_keys=8, key_dim=6, top_k=4, value_dim=5, heads=2, query_norm="batch",
            overparam=2, usage_window=32, seed=9)
  layer = ProductKeyMemory(**kw)
  cfg = layer.get_config()
  assert ProductKeyMemory.from_config(cfg).get_config() == cfg
  model = _model(kw)
  x = _x(b=16)
  model.compile("adam", "mse")
  hist = model.fit(x, np.ones([16, 1]), epochs=2, batch_size=8, verbose=0)
  assert "pkm_slots_used" in hist.history and "pkm_usage_kl" in hist.history
  assert 0 < hist.history["pkm_slots_used"][-1] <= 1
  want = model.predict(x, verbose=0)
  model.save(str(tmp_path / "sm"))                              # SavedModel
  loaded = tf.keras.models.load_model(str(tmp_path / "sm"))
  np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
  raw = tf.saved_model.load(str(tmp_path / "sm"))               # plain TF, no Keras objects
  np.testing.assert_allclose(raw.signatures["serving_default"](tf.constant(x))
                             [loaded.output_names[0]].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA compile check skipped")
def test_cuda_kernel_compiles(tmp_path):
  """Compile-only check of the CUDA kernels (no GPU needed)."""
  root = pathlib.Path(__file__).resolve().parents[1] / "ops" / "cc" / "kernels"
  cmd = ["nvcc", "-std=c++17", "-x", "cu", "-c", "-DGOOGLE_CUDA=1", "-DNDEBUG",
         "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", f"-I{tf.sysconfig.get_include()}",
         f"-I{root}", str(root / "pkm_gather_kernels.cu.cc"), "-o", str(tmp_path / "pkm.o")]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  assert (tmp_path / "pkm.o").stat().st_size > 0
