"""Fused sparse gather + weighted sum of Product-Key Memory, out[..., :] = sum_t w[..., t] V[idx[..., t], :].

The op (`PkmSparseGatherSum`, C++ CPU kernel in ops/cc/kernels/pkm_gather_kernels.cc, CUDA in
the .cu.cc beside it) lives in the same library as the ICS ops (ops/_ssr_ops.so, `make ops`).
Its registered gradient gives `values` an IndexedSlices over the retrieved rows only, so
optimizers with sparse updates touch only those rows. Without the library,
`sparse_gather_sum` falls back to `tf.gather` + weighted sum (the same numbers up to float
rounding order).
"""
from __future__ import annotations

import tensorflow as tf

from ssr_tf.ops import ssr_ops

__all__ = ["is_available", "load_error", "sparse_gather_sum", "sparse_gather_sum_fused",
           "sub_key_top_k", "sub_key_top_k_tf"]
GPU_MAX_SUB_KEYS = 8192   # the CUDA top-k keeps one row's n scores in shared memory


def _has_op() -> bool:
  lib = ssr_ops.op_library()
  return lib is not None and hasattr(lib, "pkm_sparse_gather_sum") and \
      hasattr(lib, "pkm_sub_key_top_k")


def is_available() -> bool:
  """True when the op library loaded and contains the PKM sparse-gather op."""
  return _has_op()


def load_error() -> str | None:
  """Why the fused op is unavailable, or None."""
  if _has_op():
    return None
  return ssr_ops.load_error() or (f"{ssr_ops.library_path()} lacks the PKM ops "
                                  f"(rebuild with `make ops`)")


def _is_resource_variable(values) -> bool:
  return isinstance(values, tf.Variable) and getattr(values, "handle", None) is not None and \
      values.handle.dtype == tf.resource


def sparse_gather_sum_fused(values, indices: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """The fused op for any leading shape: values [M, D], indices/weights [..., k] -> [..., D].

  A resource variable is read in place (PkmResourceSparseGatherSum, under the variable's
  shared lock): a dense read of a table that sparse updates have touched would copy all of
  it every step (TF's copy-on-read mode). Other tensors go through PkmSparseGatherSum.
  """
  if not _has_op():
    raise RuntimeError(f"PKM sparse-gather op unavailable: {load_error()}")
  lib = ssr_ops.op_library()
  indices = tf.convert_to_tensor(indices)
  weights = tf.convert_to_tensor(weights, dtype=values.dtype)
  k = tf.shape(indices)[-1]
  lead = tf.shape(indices)[:-1]
  flat_idx, flat_w = tf.reshape(indices, [-1, k]), tf.reshape(weights, [-1, k])
  if _is_resource_variable(values):
    # Mark the variable as read so GradientTape watches its handle (0-row gather, no copy).
    values.sparse_read(tf.zeros([0], indices.dtype))
    out = lib.pkm_resource_sparse_gather_sum(values.handle, flat_idx, flat_w)   # [N, D]
  else:
    out = lib.pkm_sparse_gather_sum(values, flat_idx, flat_w)                   # [N, D]
  out = tf.reshape(out, tf.concat([lead, tf.shape(values)[-1:]], 0))
  if indices.shape.rank is not None and values.shape[-1] is not None:
    out.set_shape(indices.shape[:-1].concatenate([values.shape[-1]]))
  return out


def sub_key_top_k_tf(queries: tf.Tensor, keys: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Composed TF: s[r, g, i] = <queries[r, g], keys[g, i]>, then tf.math.top_k(s, k).

  queries [R, G, D], keys [G, n, D] -> (values [R, G, k], indices [R, G, k] int32)."""
  scores = tf.einsum("rgd,gnd->rgn", queries, keys)            # [R, G, n]
  return tf.math.top_k(scores, k=k)


def sub_key_top_k(queries: tf.Tensor, keys: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The first PKM stage fused (PkmSubKeyTopK): scores each half-query against its sub-key
  table and keeps the top k in one pass, without the [R, G, n] score matrix.

  Args:
    queries: [R, G, D] half-queries (G = heads * 2 tables).
    keys: [G, n, D] sub-key tables.
    k: sub-keys kept per (row, table), k <= n.
  Returns:
    (values [R, G, k] sorted descending, indices [R, G, k] int32); ties keep the lower
    index first, as tf.math.top_k. Gradients flow to queries and keys through the values.
  """
  if not _has_op():
    return sub_key_top_k_tf(queries, keys, k)
  return tuple(ssr_ops.op_library().pkm_sub_key_top_k(queries, keys, k=k))


@tf.RegisterGradient("PkmSubKeyTopK")
def _pkm_sub_key_top_k_grad(op, d_values, _):
  """dq[r, g] = sum_t dv[r, g, t] K[g, i_t];  dK[g, i_t] += dv[r, g, t] q[r, g]."""
  queries, keys = op.inputs
  idx = op.outputs[1]                                            # [R, G, k]
  groups, n = tf.shape(keys)[0], tf.shape(keys)[1]
  flat = idx + (tf.range(groups, dtype=tf.int32) * n)[None, :, None]   # rows of [G * n, D]
  picked = tf.gather(tf.reshape(keys, [groups * n, -1]), flat)   # [R, G, k, D]
  d_queries = tf.einsum("rgk,rgkd->rgd", d_values, picked)
  contrib = d_values[..., None] * queries[:, :, None, :]         # [R, G, k, D]
  d_keys = tf.math.unsorted_segment_sum(tf.reshape(contrib, [-1, tf.shape(keys)[2]]),
                                        tf.reshape(flat, [-1]), groups * n)
  return [d_queries, tf.reshape(d_keys, tf.shape(keys))]


def sparse_gather_sum(values: tf.Tensor, indices: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """out[..., :] = sum_t weights[..., t] * values[indices[..., t], :].

  Args:
    values: [slots, value_dim] table (float32 or float64; a variable is fine).
    indices: [..., k] int32/int64 slot ids in [0, slots).
    weights: [..., k] mixing weights.
  Returns:
    [..., value_dim]; e.g. indices [batch, heads, k] -> [batch, heads, value_dim].
  """
  if _has_op():
    return sparse_gather_sum_fused(values, indices, weights)
  from ssr_tf.layers.pkm import sparse_gather_sum_tf  # pylint: disable=import-outside-toplevel
  return sparse_gather_sum_tf(values, indices, weights)


@tf.RegisterGradient("PkmSparseGatherSum")
def _pkm_sparse_gather_sum_grad(op, grad):
  """d values = IndexedSlices(w[r, t] * grad[r], idx[r, t]); d w[r, t] = <grad[r], V[idx[r, t]]>."""
  values, indices, weights = op.inputs
  grad_weights, grad_rows = ssr_ops.op_library().pkm_sparse_gather_sum_grad(
      values, indices, weights, grad)
  d_values = tf.IndexedSlices(grad_rows, tf.reshape(indices, [-1]),
                              tf.shape(values, out_type=indices.dtype))
  return [d_values, None, grad_weights]


@tf.RegisterGradient("PkmResourceSparseGatherSum")
def _pkm_resource_sparse_gather_sum_grad(op, grad):
  """As PkmSparseGatherSum's gradient; the IndexedSlices go to the variable's handle."""
  handle, indices, weights = op.inputs
  grad_weights, grad_rows = ssr_ops.op_library().pkm_resource_sparse_gather_sum_grad(
      handle, indices, weights, grad)
  shape = tf.raw_ops.VariableShape(input=handle, out_type=indices.dtype)
  d_values = tf.IndexedSlices(grad_rows, tf.reshape(indices, [-1]), shape)
  return [d_values, None, grad_weights]
