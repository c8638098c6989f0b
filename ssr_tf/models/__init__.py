"""Ranking models: field embeddings -> registered backbone -> click / pay heads."""
import ssr_tf  # noqa: F401
