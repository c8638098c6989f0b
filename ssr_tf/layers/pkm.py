"""Product-Key Memory (Lample et al. 2019, "Large Memory Layers with Product Keys") and the
memory gate of MSN (memory-based sparse activation scaling).

q = norm(x W_q);  s_c = q_c K_c^T (c = 1, 2 halves);  I_c = topk(s_c, k');
cand = {(i, j): s_1[i] + s_2[j] : i in I_1, j in I_2};  (S, I) = topk(cand, k);
m = sum_heads sum_{t<k} softmax(S)_t * V[I_t]   (V: num_sub_keys**2 x value_dim, read by gather)
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import tensorflow as tf

from ssr_tf.layers import _impl
from ssr_tf.layers.ssr import CONFIG_DEFAULT, ConfigDefault, backbone_defaults, resolve_defaults

QUERY_NORMS = ("batch", "layer", "none")
GATES = ("sigmoid", "add")
_warned = False


def sparse_gather_sum_tf(values: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Composed-TF sparse gather + weighted sum, out[..., :] = sum_t w[..., t] * V[idx[..., t], :].

  The reference the fused op is checked against. `tf.gather` on a variable gives the
  values an IndexedSlices gradient touching only the gathered rows.

  Args:
    values: [slots, value_dim] table.
    indices: [..., k] int32/int64 row ids.
    weights: [..., k] mixing weights.
  Returns:
    [..., value_dim].
  """
  rows = tf.gather(values, indices)                     # [..., k, value_dim]
  return tf.reduce_sum(rows * weights[..., None], axis=-2)


def usage_stats(counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Slot utilisation of a hit-count vector: used = mean_i [c_i > 0];
  kl = KL(p || uniform) = sum_i p_i log(N p_i), p = c / sum(c) (0 when nothing was hit).

  Args:
    counts: [slots] non-negative hit counts.
  Returns:
    (used, kl): scalar float32 tensors; used in [0, 1], kl in [0, log N].
  """
  counts = tf.cast(counts, tf.float32)
  n = tf.cast(tf.size(counts), tf.float32)
  used = tf.reduce_mean(tf.cast(counts > 0, tf.float32))
  total = tf.reduce_sum(counts)
  p = tf.math.divide_no_nan(counts, total)
  kl = tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p * n), p))
  return used, kl


def _fused_ok(impl: str) -> bool:
  """True when the fused sparse-gather op should run ('auto' falls back with one warning:
  when the op library did not load at all, the SSR layers' warning of ssr_tf.layers._impl
  is that one)."""
  global _warned
  if impl == "tf":
    return False
  try:
    from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
    ok, why = pkm_ops.is_available(), pkm_ops.load_error()
  except ImportError as e:
    ok, why = False, f"ssr_tf.ops.pkm not importable: {e}"
  if ok:
    return True
  if impl == "auto" and not _impl.use_fused(impl):   # no library: warned there, once
    return False
  if impl == "fused":
    raise RuntimeError(f"impl='fused' but the PKM sparse-gather op did not load: {why} "
                       f"(run `make ops`)")
  if not _warned:
    logging.warning("PKM fused sparse-gather op unavailable (%s); impl='auto' falls back to "
                    "pure TF", why)
    _warned = True
  return False


def pkm_flops(input_dim: int, num_sub_keys: int, key_dim: int, top_k: int, value_dim: int,
              heads: int = 1, sub_top_k: Optional[int] = None, overparam: int = 1) -> dict:
  """Per-example FLOPs of ProductKeyMemory (multiply-add = 2), by stage.

  Only `scoring` grows with memory size, as 2 * heads * sqrt(slots) * key_dim; top-k
  selection (comparisons, not FLOPs) is ~heads * (2 sqrt(slots) + k'^2) * log k.
  """
  ks = sub_top_k or top_k
  hk = heads * key_dim
  query = 2 * input_dim * hk + hk if overparam == 1 else (
      2 * input_dim * overparam * hk + 2 * overparam * hk * hk + hk)
  out = {
      "query": query,
      "query_norm": 4 * hk,
      "scoring": 2 * heads * num_sub_keys * key_dim,
      "candidates": heads * ks * ks,
      "softmax": 3 * heads * top_k,
      "gather_sum": 2 * heads * top_k * value_dim + (heads - 1) * value_dim,
  }
  out["total"] = sum(out.values())
  return out


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class ProductKeyMemory(tf.keras.layers.Layer):
  """Product-Key Memory: a num_sub_keys**2-slot value table read sparsely, ``[..., d_in] ->
  [..., value_dim]``.

  m = sum_h sum_{t<k} softmax(S_h)_t V[I_h,t], where (S_h, I_h) are the top-k of the k'^2
  candidate scores s_1[i] + s_2[j] built from the top-k' of each half-query against its
  sub-key table. Compute per example is O(heads * (sqrt(N) * key_dim + k'^2 + k * value_dim))
  for N slots; the value table is read with a gather (its gradient is IndexedSlices over
  the retrieved rows only), never a matmul over all slots.

  Against retrieval collapse: `query_norm` ("batch" as in the PKM paper, or "layer" per
  half-query) and `overparam` > 1, which factorises W_q = A B and K_c = K'_c P_c (linear,
  foldable after training); the shared factors B and P_c move every key and query with
  each update, so unselected keys are not frozen.

  Utilisation: while training, hit counts per slot are summed over windows of
  `usage_window` examples; at the end of each window the share of slots hit and
  KL(usage || uniform) are stored and reported through `add_metric` as
  ``{name}_slots_used`` and ``{name}_usage_kl`` (Keras logs; before the first window
  closes the running window is reported), and written with `tf.summary.scalar` as
  ``.../{name}/slots_used`` and ``.../{name}/usage_kl`` at each window close, at the layer's
  own training-step count, whenever a default summary writer is set (Keras's TensorBoard
  callback sets one while training). Per step this costs
  O(batch * heads * k) (running sums of hits, used slots and c log c), plus one O(N) zeroing
  of the counts per window.

  Reference: Lample et al., "Large Memory Layers with Product Keys", NeurIPS 2019;
  MSN ("memory-based sparse activation scaling"), Douyin search ranking.

  Example:
    >>> pkm = ProductKeyMemory(num_sub_keys=64, key_dim=32, top_k=8, value_dim=16)
    >>> m = pkm(tf.random.normal([4, 48]))                        # [4, 16], 4096 slots

  Args:
    num_sub_keys: n, sub-keys per half; memory slots = n**2.
    key_dim: query / key width per head (even; each half is key_dim / 2).
    top_k: k, slots read per example and head.
    value_dim: width of each value row (and of the output).
    heads: independent query heads; their reads are summed.
    query_norm: "batch" (BatchNormalization on queries), "layer" (LayerNorm per
      half-query) or "none".
    sub_top_k: k', candidates kept per sub-key table (default top_k; k'^2 >= top_k).
    overparam: over-parameterisation factor m of the query net and keys (1 = off).
    track_usage: count slot hits while training and report the utilisation metrics.
    usage_window: examples per utilisation window.
    impl: "auto" (the custom sparse-gather op when its library loaded, else tf.gather with
      one warning), "tf" (tf.gather) or "fused" (custom op, must load).
    seed: seed of the key, value and query initialisers (None: unseeded).
  heads, query_norm, sub_top_k, overparam, track_usage and usage_window default to the same
  keys of ssr_tf.models.ssr_msn.MemoryConfig, impl to SSRBackboneConfig's: the one place
  each default is written.
  Input shape: [..., d_in]. Output shape: [..., value_dim].
  """

  def __init__(self, num_sub_keys: int, key_dim: int, top_k: int, value_dim: int,
               heads: int | ConfigDefault = CONFIG_DEFAULT,
               query_norm: str | ConfigDefault = CONFIG_DEFAULT,
               sub_top_k: Optional[int] | ConfigDefault = CONFIG_DEFAULT,
               overparam: int | ConfigDefault = CONFIG_DEFAULT,
               track_usage: bool | ConfigDefault = CONFIG_DEFAULT,
               usage_window: int | ConfigDefault = CONFIG_DEFAULT,
               impl: str | ConfigDefault = CONFIG_DEFAULT, seed: Optional[int] = None,
               **kwargs):
    super().__init__(**kwargs)
    s = resolve_defaults(dict(heads=heads, query_norm=query_norm, sub_top_k=sub_top_k,
                              overparam=overparam, track_usage=track_usage,
                              usage_window=usage_window, impl=impl), memory_defaults)
    heads, query_norm, sub_top_k = s["heads"], s["query_norm"], s["sub_top_k"]
    overparam, track_usage, usage_window = s["overparam"], s["track_usage"], s["usage_window"]
    impl = s["impl"]
    for name, value in (("num_sub_keys", num_sub_keys), ("key_dim", key_dim), ("top_k", top_k),
                        ("value_dim", value_dim), ("heads", heads), ("overparam", overparam),
                        ("usage_window", usage_window)):
      if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if key_dim % 2:
      raise ValueError(f"key_dim must be even (two half-queries), got {key_dim}")
    if query_norm not in QUERY_NORMS:
      raise ValueError(f"query_norm must be one of {QUERY_NORMS}, got {query_norm!r}")
    ks = top_k if sub_top_k is None else int(sub_top_k)
    if not 1 <= ks <= num_sub_keys:
      raise ValueError(f"sub_top_k (default top_k) must be in [1, num_sub_keys={num_sub_keys}],"
                       f" got {ks}")
    if top_k > ks * ks:
      raise ValueError(f"top_k must be <= sub_top_k**2 = {ks * ks} candidates, got {top_k}")
    if num_sub_keys * num_sub_keys >= 2**31:
      raise ValueError(f"num_sub_keys**2 must fit int32, got {num_sub_keys}**2")
    self.num_sub_keys = int(num_sub_keys)
    self.key_dim = int(key_dim)
    self.top_k = int(top_k)
    self.value_dim = int(value_dim)
    self.heads = int(heads)
    self.query_norm = query_norm
    self.sub_top_k = None if sub_top_k is None else int(sub_top_k)
    self.overparam = int(overparam)
    self.track_usage = bool(track_usage)
    self.usage_window = int(usage_window)
    self.impl = _impl.check(impl)
    self.seed = seed

  @property
  def memory_size(self) -> int:
    """Slots N = num_sub_keys**2."""
    return self.num_sub_keys * self.num_sub_keys

  @property
  def _ks(self) -> int:
    return self.sub_top_k or self.top_k

  def _init_seed(self, salt: int) -> Optional[int]:
    return None if self.seed is None else int(self.seed) * 1009 + salt

  def build(self, input_shape):
    d_in = int(input_shape[-1])
    self.input_dim = d_in
    h, kd, half, m = self.heads, self.key_dim, self.key_dim // 2, self.overparam
    glorot = tf.keras.initializers.GlorotUniform
    if m == 1:
      self.query_kernel = self.add_weight("query_kernel", shape=[d_in, h * kd],
                                          initializer=glorot(self._init_seed(1)))
    else:
      self.query_kernel_a = self.add_weight("query_kernel_a", shape=[d_in, m * h * kd],
                                            initializer=glorot(self._init_seed(1)))
      self.query_kernel_b = self.add_weight("query_kernel_b", shape=[m * h * kd, h * kd],
                                            initializer=glorot(self._init_seed(2)))
    self.query_bias = self.add_weight("query_bias", shape=[h * kd], initializer="zeros")
    if self.query_norm == "batch":
      self.query_bn = tf.keras.layers.BatchNormalization(name="query_bn", dtype=tf.float32)
      self.query_bn.build([None, h * kd])
    elif self.query_norm == "layer":
      self.query_ln_scale = self.add_weight("query_ln_scale", shape=[h, 2, half],
                                            initializer="ones")
      self.query_ln_offset = self.add_weight("query_ln_offset", shape=[h, 2, half],
                                             initializer="zeros")
    n = self.num_sub_keys
    if m == 1:
      bound = 1.0 / math.sqrt(half)
      self.sub_keys = self.add_weight(
          "sub_keys", shape=[h, 2, n, half],
          initializer=tf.keras.initializers.RandomUniform(-bound, bound, self._init_seed(3)))
    else:
      bound = 1.0 / math.sqrt(m * half)
      self.sub_keys = self.add_weight(
          "sub_keys", shape=[h, 2, n, m * half],
          initializer=tf.keras.initializers.RandomUniform(-bound, bound, self._init_seed(3)))
      self.key_proj = self.add_weight(
          "key_proj", shape=[h, 2, m * half, half],
          initializer=tf.keras.initializers.RandomNormal(0.0, 1.0 / math.sqrt(half),
                                                         self._init_seed(4)))
    self.values = self.add_weight(
        "values", shape=[self.memory_size, self.value_dim],
        initializer=tf.keras.initializers.RandomNormal(0.0, self.value_dim ** -0.5,
                                                       self._init_seed(5)))
    if self.track_usage:
      stat = dict(trainable=False, dtype=tf.float32,
                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.slot_counts = self.add_weight("slot_counts", shape=[self.memory_size],
                                         initializer="zeros", **stat)
      self.window_seen = self.add_weight("window_seen", shape=[], initializer="zeros", **stat)
      self.windows_done = self.add_weight("windows_done", shape=[], initializer="zeros", **stat)
      self.last_used = self.add_weight("last_slots_used", shape=[], initializer="zeros", **stat)
      self.last_kl = self.add_weight("last_usage_kl", shape=[], initializer="zeros", **stat)
      stat64 = {**stat, "dtype": tf.float64}
      self.window_used = self.add_weight("window_used", shape=[], initializer="zeros", **stat64)
      self.window_xlogx = self.add_weight("window_xlogx", shape=[], initializer="zeros",
                                          **stat64)
      self.window_hits = self.add_weight("window_hits", shape=[], initializer="zeros", **stat64)
      self.train_steps = self.add_weight("train_steps", shape=[], initializer="zeros",
                                         **{**stat, "dtype": tf.int64})
    super().build(input_shape)

  # -- retrieval ---------------------------------------------------------------------------

  def keys(self) -> tf.Tensor:
    """Effective sub-key tables [heads, 2, num_sub_keys, key_dim / 2] (K'_c P_c if overparam)."""
    if self.overparam == 1:
      return self.sub_keys
    return tf.einsum("hcnm,hcmd->hcnd", self.sub_keys, self.key_proj)

  def queries(self, x: tf.Tensor, training=None) -> tf.Tensor:
    """[batch, d_in] -> normalised half-queries [batch, heads, 2, key_dim / 2]."""
    if self.overparam == 1:
      q = tf.matmul(x, self.query_kernel)
    else:
      q = tf.matmul(tf.matmul(x, self.query_kernel_a), self.query_kernel_b)
    q = q + self.query_bias                                         # [batch, heads * key_dim]
    if self.query_norm == "batch":
      q = self.query_bn(q, training=training)
    q = tf.reshape(q, [-1, self.heads, 2, self.key_dim // 2])      # [batch, heads, 2, half]
    if self.query_norm == "layer":
      mean, var = tf.nn.moments(q, axes=[-1], keepdims=True)
      q = (q - mean) * tf.math.rsqrt(var + 1e-5) * self.query_ln_scale + self.query_ln_offset
    return q

  def retrieve(self, x: tf.Tensor, training=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Two-stage product-key top-k: [batch, d_in] -> (slot ids [batch, heads, k] int32,
    scores [batch, heads, k]) with scores sorted descending."""
    n, ks, h, half = self.num_sub_keys, self._ks, self.heads, self.key_dim // 2
    q = self.queries(x, training=training)                          # [batch, heads, 2, half]
    if self._fused_top_k():
      from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
      s_top, i_top = pkm_ops.sub_key_top_k(                         # scoring + top-k, one pass
          tf.reshape(q, [-1, h * 2, half]), tf.reshape(self.keys(), [h * 2, n, half]), ks)
      s_top = tf.reshape(s_top, [-1, h, 2, ks])                     # [batch, heads, 2, k']
      i_top = tf.reshape(i_top, [-1, h, 2, ks])
    else:
      s = tf.einsum("bhcd,hcnd->bhcn", q, self.keys())              # [batch, heads, 2, n]
      s_top, i_top = tf.math.top_k(s, k=ks)                         # [batch, heads, 2, k']
    cand = s_top[:, :, 0, :, None] + s_top[:, :, 1, None, :]        # [batch, heads, k', k']
    cand_ids = i_top[:, :, 0, :, None] * n + i_top[:, :, 1, None, :]
    cand = tf.reshape(cand, [-1, self.heads, ks * ks])              # [batch, heads, k'^2]
    cand_ids = tf.reshape(cand_ids, [-1, self.heads, ks * ks])
    scores, pos = tf.math.top_k(cand, k=self.top_k)                 # [batch, heads, k]
    ids = tf.gather(cand_ids, pos, batch_dims=2)                    # [batch, heads, k]
    return ids, scores

  def _fused_top_k(self) -> bool:
    """Fused sub-key top-k: when the op library loaded, and within the GPU kernel's limit
    when a GPU is visible."""
    if not _fused_ok(self.impl):
      return False
    from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
    return (self.num_sub_keys <= pkm_ops.GPU_MAX_SUB_KEYS
            or not tf.config.list_logical_devices("GPU"))

  def call(self, x, training=None):
    x = tf.convert_to_tensor(x)
    lead = tf.shape(x)[:-1]
    x2 = tf.reshape(tf.cast(x, tf.float32), [-1, self.input_dim])   # [batch, d_in]
    ids, scores = self.retrieve(x2, training=training)              # [batch, heads, k]
    weights = tf.nn.softmax(scores, axis=-1)
    if _fused_ok(self.impl):
      from ssr_tf.ops import pkm as pkm_ops  # pylint: disable=import-outside-toplevel
      out = pkm_ops.sparse_gather_sum(self.values, ids, weights)    # [batch, heads, value_dim]
    else:
      out = sparse_gather_sum_tf(self.values, ids, weights)
    out = tf.reduce_sum(out, axis=1)                                # [batch, value_dim]
    if self.track_usage:
      used, kl = (self._update_usage(ids) if _is_training(training)
                  else (self.last_used.read_value(), self.last_kl.read_value()))
      self.add_metric(used, name=f"{self.name}_slots_used")
      self.add_metric(kl, name=f"{self.name}_usage_kl")
    out = tf.reshape(out, tf.concat([lead, [self.value_dim]], 0))
    return tf.cast(out, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape[:-1]).concatenate([self.value_dim])

  # -- utilisation -------------------------------------------------------------------------

  def _update_usage(self, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Adds this batch's hits in O(batch * heads * k) and returns (used, kl) of the last
    closed window (of the open one before the first closes).

    Running sums over the window: U = #{c_i > 0}, S = sum_i c_i log c_i, T = sum_i c_i, so
    used = U / N and KL(p || uniform) = log N + S / T - log T without an O(N) pass; closing a
    window (every `usage_window` examples) zeroes the counts.
    """
    flat = tf.reshape(ids, [-1])
    uniq, _, cnt = tf.unique_with_counts(flat)
    cnt = tf.cast(cnt, tf.float32)
    old = tf.gather(self.slot_counts, uniq)                        # [unique hits]
    new = old + cnt
    xlogx = lambda c: tf.math.multiply_no_nan(tf.math.log(tf.cast(c, tf.float64)),  # noqa: E731
                                              tf.cast(c, tf.float64))
    self.slot_counts.scatter_add(tf.IndexedSlices(cnt, uniq))
    self.window_used.assign_add(tf.reduce_sum(tf.cast(old == 0, tf.float64)))
    self.window_xlogx.assign_add(tf.reduce_sum(xlogx(new) - xlogx(old)))
    self.window_hits.assign_add(tf.cast(tf.size(flat), tf.float64))
    seen = self.window_seen.assign_add(tf.cast(tf.shape(ids)[0], tf.float32))
    n = float(self.memory_size)
    total = self.window_hits.read_value()
    used = tf.cast(self.window_used.read_value() / n, tf.float32)
    kl = tf.cast(math.log(n) + self.window_xlogx.read_value() / total - tf.math.log(total),
                 tf.float32)

    def close():
      deps = [self.last_used.assign(used), self.last_kl.assign(kl),
              self.windows_done.assign_add(1.0)]
      with tf.control_dependencies(deps):
        deps = [self.slot_counts.assign(tf.zeros_like(self.slot_counts))]
        deps += [v.assign(tf.zeros_like(v)) for v in (self.window_seen, self.window_used,
                                                        self.window_xlogx, self.window_hits)]
        with tf.control_dependencies(deps):
          return tf.identity(used), tf.identity(kl)

    def running():
      done = self.windows_done > 0
      return (tf.where(done, self.last_used.read_value(), used),
              tf.where(done, self.last_kl.read_value(), kl))

    closed = seen >= float(self.usage_window)
    steps = self.train_steps.assign_add(1)
    used, kl = tf.cond(closed, close, running)
    # One point per closed window, at this layer's training-step count (Keras's TensorBoard
    # callback pins its own default step at 0 inside compiled functions). Tags
    # "<outer scopes>/<name>/slots_used"; a no-op without a default summary writer.
    with tf.summary.record_if(closed):
      tf.summary.scalar("slots_used", used, step=steps)
      tf.summary.scalar("usage_kl", kl, step=steps)
    return used, kl

  def usage(self) -> dict:
    """Utilisation of the current (open) window and of the last closed one, as floats."""
    used, kl = usage_stats(self.slot_counts)
    return {"slots": self.memory_size, "window_examples": float(self.window_seen.numpy()),
            "slots_used": float(used), "usage_kl": float(kl),
            "windows_done": float(self.windows_done.numpy()),
            "last_slots_used": float(self.last_used.numpy()),
            "last_usage_kl": float(self.last_kl.numpy())}

  def flops_per_example(self, input_dim: Optional[int] = None) -> int:
    return pkm_flops(input_dim or self.input_dim, self.num_sub_keys, self.key_dim, self.top_k,
                     self.value_dim, self.heads, self.sub_top_k, self.overparam)["total"]

  def get_config(self):
    return {**super().get_config(), "num_sub_keys": self.num_sub_keys, "key_dim": self.key_dim,
            "top_k": self.top_k, "value_dim": self.value_dim, "heads": self.heads,
            "query_norm": self.query_norm, "sub_top_k": self.sub_top_k,
            "overparam": self.overparam, "track_usage": self.track_usage,
            "usage_window": self.usage_window, "impl": self.impl, "seed": self.seed}


def memory_defaults() -> dict:
  """{key: default} of MemoryConfig, with impl from SSRBackboneConfig (the backbone's)."""
  from ssr_tf.models.ssr_msn import MemoryConfig  # pylint: disable=import-outside-toplevel
  return {**{f.name: f.default for f in dataclasses.fields(MemoryConfig)},
          "impl": backbone_defaults()["impl"]}


def _is_training(training) -> bool:
  if training is None:
    return bool(tf.keras.backend.learning_phase()) if not tf.inside_function() else False
  value = tf.get_static_value(training)
  return bool(value) if value is not None else False


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class MemoryGate(tf.keras.layers.Layer):
  """Merges a memory read m into a representation h, ``([batch, H], [batch, M]) -> [batch, H]``.

  sigmoid: h' = h * scale * sigmoid(m W + b)  (scale 2 with W = b = 0 is the identity);
  add:     h' = h + m W + b.
  W starts at zero by default, so the gate starts as the identity and the memory's
  contribution grows from there (W's gradient h * dL/dh' * m is non-zero at once).

  Example:
    >>> h2 = MemoryGate("sigmoid")([tf.ones([4, 32]), tf.ones([4, 16])])   # [4, 32]

  Args:
    gate: "sigmoid" (multiplicative, element-wise gate) or "add" (projected residual).
    scale: multiplier of the sigmoid gate.
    kernel_initializer: initializer of W ([M, H]); default zeros (identity at start).
  """

  def __init__(self, gate: str, scale: float = 2.0,
               kernel_initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    if gate not in GATES:
      raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if scale <= 0:
      raise ValueError(f"scale must be > 0, got {scale}")
    self.gate = gate
    self.scale = float(scale)
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    h_shape, m_shape = input_shape
    width, mem = int(h_shape[-1]), int(m_shape[-1])
    self.kernel = self.add_weight("kernel", shape=[mem, width],
                                  initializer=self.kernel_initializer)
    self.bias = self.add_weight("bias", shape=[width], initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    h, m = inputs
    h = tf.cast(h, self.compute_dtype)
    z = tf.matmul(tf.cast(m, self.compute_dtype), self.kernel) + self.bias   # [batch, H]
    if self.gate == "sigmoid":
      return h * (self.scale * tf.sigmoid(z))
    return h + z

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape[0])

  def flops_per_example(self, width: int, mem: int) -> int:
    return 2 * mem * width + width + (5 * width if self.gate == "sigmoid" else width)

  def get_config(self):
    return {**super().get_config(), "gate": self.gate, "scale": self.scale,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer)}

