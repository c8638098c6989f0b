"""Public Keras layers of ssr_tf (imported lazily so `import ssr_tf.layers` stays cheap)."""
import importlib

import ssr_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

_EXPORTS = {
    "ICS": "ssr_tf.layers.ics",
    "ics_tf": "ssr_tf.layers.ics",
    "SSRLayer": "ssr_tf.layers.ssr",
    "FeatureEncoder": "ssr_tf.layers.embedding",
    "FeatureEmbedding": "ssr_tf.layers.embedding",
    "ProductKeyMemory": "ssr_tf.layers.pkm",
    "MemoryGate": "ssr_tf.layers.pkm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'ssr_tf.layers' has no attribute {name!r}")
