"""Ranking models: field embeddings -> registered backbone -> click / pay heads.

``build_model(spec, model_cfg)`` builds a :class:`RankingModel`; ``backbone_params`` and
``backbone_flops`` count the backbone only (embedding tables excluded, as the paper does).
"""
import ssr_tf  # noqa: F401


def __getattr__(name):
  if name in ("RankingModel", "build_model", "backbone_params", "backbone_flops"):
    from ssr_tf.models import ranker  # pylint: disable=import-outside-toplevel
    return getattr(ranker, name)
  raise AttributeError(f"module 'ssr_tf.models' has no attribute {name!r}")
