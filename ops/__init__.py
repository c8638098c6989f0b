"""ssr_tf.ops: fused ICS and grouped-projection custom ops (C++ CPU kernels, CUDA kernel source).

Layout: this folder is the repository's top-level ``ops/`` (laid out like tensorflow/custom-op);
setup.py maps it to the package ``ssr_tf.ops`` (``package_dir={"ssr_tf.ops": "ops"}``, with
``_ssr_ops.so`` and the kernel sources as package data), so it is imported as ``ssr_tf.ops``,
never as ``ops``, both in an editable install and from the wheel.

`import ssr_tf.ops` never fails because the library is missing: `is_available()` says whether
`ops/_ssr_ops.so` loaded and `load_error()` why not (build it with `make ops`).

  ics(z, alpha, gamma)                      y = gamma * x_T, x_{t+1} = relu(x_t - alpha_t * mean(x_t))
  dynamic_view(x, proj_kernel, alpha, gamma)  ICS(reshape(x @ reshape(W, [d_in, V*E]), [B, V, E]))
  block_fusion(h, kernel, bias)             out[b, v] = h[b, v] @ kernel[v] + bias[v]
"""
from ssr_tf.ops.ssr_ops import (block_fusion, dynamic_view, ics, is_available, library_path,
                                load_error, op_library)

__all__ = ["block_fusion", "dynamic_view", "ics", "is_available", "library_path", "load_error",
           "op_library"]
