"""Loads ops/_ssr_ops.so with the public `tf.load_op_library` and wraps its ops.

Shapes: z, y [B, V, D]; alpha [V, T]; gamma [V, D]; x [B, d_in]; proj_kernel [d_in, V, E];
h [B, V, E]; kernel [V, E, O]; bias [V, O].
"""
from __future__ import annotations

import os
import pathlib
import threading
from types import ModuleType

import ssr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

_LIB_NAME = "_ssr_ops.so"
_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "lib": None, "error": None}


def library_path() -> pathlib.Path:
  """Where the op library is looked for ($SSR_TF_OPS_LIB overrides)."""
  return pathlib.Path(os.environ.get("SSR_TF_OPS_LIB", pathlib.Path(__file__).parent / _LIB_NAME))


def op_library() -> ModuleType | None:
  """The loaded op module (its functions: ssr_ics, ssr_ics_grad, ...), or None."""
  with _lock:
    if not _state["loaded"]:
      _state["loaded"] = True
      path = library_path()
      if not path.exists():
        _state["error"] = f"{path} not found (build it with `make ops`)"
      else:
        try:
          _state["lib"] = tf.load_op_library(str(path))
          from ssr_tf.ops import ssr_grads  # noqa: F401  pylint: disable=import-outside-toplevel
        except (tf.errors.NotFoundError, OSError, RuntimeError) as e:
          _state["error"] = f"{path} failed to load: {e}"
    return _state["lib"]  # type: ignore[return-value]


def is_available() -> bool:
  """True when the op library loaded (loads it on first call)."""
  return op_library() is not None


def load_error() -> str | None:
  """Why the op library is unavailable, or None when it loaded."""
  op_library()
  return _state["error"]  # type: ignore[return-value]


def _lib() -> ModuleType:
  lib = op_library()
  if lib is None:
    raise RuntimeError(f"ssr_tf op library unavailable: {load_error()}")
  return lib


def ics(z: tf.Tensor, alpha: tf.Tensor, gamma: tf.Tensor) -> tf.Tensor:
  """Fused ICS: x0 = relu(z); x_{t+1} = relu(x_t - alpha[v,t] mean_d x_t); y = gamma[v] x_T.

  Args:
    z: [batch, views, dim] float32.
    alpha: [views, T] extinction rates.
    gamma: [views, dim] recovery scales.
  Returns:
    [batch, views, dim], differentiable w.r.t. z, alpha and gamma.
  """
  y, _ = _lib().ssr_ics(z=z, alpha=alpha, gamma=gamma)
  return y


def dynamic_view(x: tf.Tensor, proj_kernel: tf.Tensor, alpha: tf.Tensor, gamma: tf.Tensor,
                 single_op: bool = False) -> tf.Tensor:
  """SSR-D filter: y = ICS(reshape(x @ reshape(W, [d_in, V*E]), [B, V, E])).

  By default the projection is TF's MatMul (oneDNN sgemm on x86) followed by the fused
  `SsrIcs` op: measured faster here than `single_op=True`, the one-op `SsrDynamicView`
  (an Eigen GEMM per row block with the ICS epilogue applied while the block is in cache),
  because TF's sgemm beats Eigen's by more than the saved pass over z (docs/ops.md).

  Args:
    x: [batch, d_in] float32.
    proj_kernel: [d_in, views, E] per-view projections W_i^proj side by side.
    alpha: [views, T]; gamma: [views, E].
    single_op: use the one-op SsrDynamicView kernel.
  Returns:
    [batch, views, E], differentiable w.r.t. all four inputs.
  """
  lib = _lib()
  if single_op:
    y, _, _ = lib.ssr_dynamic_view(x=x, proj_kernel=proj_kernel, alpha=alpha, gamma=gamma)
    return y
  d_in, views, dim = tf.unstack(tf.shape(proj_kernel))
  z = tf.matmul(x, tf.reshape(proj_kernel, [d_in, views * dim]))     # [batch, V*E]
  z = tf.reshape(z, [-1, views, dim])                                 # [batch, V, E]
  if proj_kernel.shape.rank == 3:
    z = tf.ensure_shape(z, [None, proj_kernel.shape[1], proj_kernel.shape[2]])
  y, _ = lib.ssr_ics(z=z, alpha=alpha, gamma=gamma)
  return y


def block_fusion(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
  """Block-diagonal fusion: out[b, v] = h[b, v] @ kernel[v] + bias[v].

  Args:
    h: [batch, views, E] float32.
    kernel: [views, E, O]; bias: [views, O].
  Returns:
    [batch, views, O], differentiable w.r.t. all three inputs.
  """
  return _lib().ssr_block_fusion(h=h, kernel=kernel, bias=bias)
