"""ssr_tf: explicit-sparsity ranking models (SSR, MSN) on TensorFlow with Keras 2.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` (unless the user set it) before
TensorFlow is imported, so ``tf.keras`` is Keras 2 (tf-keras) everywhere, as
tensorflow-recommenders requires.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
