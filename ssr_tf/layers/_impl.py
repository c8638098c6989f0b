"""The `impl` switch shared by layers that have a fused custom-op path."""
from __future__ import annotations

import logging

IMPLS = ("tf", "fused", "auto")
_warned = False


def check(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  return impl


def use_fused(impl: str) -> bool:
  """True when the fused op should run: 'fused' requires it, 'auto' uses it if it loads."""
  global _warned
  if impl == "tf":
    return False
  try:
    from ssr_tf import ops  # pylint: disable=import-outside-toplevel
    if ops.is_available():
      return True
    why = ops.load_error()
  except ImportError as e:
    why = str(e)
  if impl == "fused":
    raise RuntimeError(f"impl='fused' but the ssr_tf op library did not load: {why} "
                       "(run `make ops`)")
  if not _warned:
    logging.warning("ssr_tf fused op unavailable (%s); impl='auto' falls back to pure TF", why)
    _warned = True
  return False
