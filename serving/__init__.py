"""TF Serving-compatible serving for ssr_tf exports.

Layout: this folder is the repository's top-level ``serving/``; setup.py maps it to the
package ``ssr_tf.serving`` (``package_dir={"ssr_tf.serving": "serving"}``), so it is
imported as ``ssr_tf.serving`` (``from ssr_tf.serving.client import RankingClient``), never as
``serving``, both in an editable install and from the wheel.

* :mod:`ssr_tf.serving.server`: ``ssr_tf serve``, a gRPC server implementing TF Serving's
  ``PredictionService`` and ``ModelService`` (plus optional REST) over the SavedModels
  that ``ssr_tf export`` writes.
* :mod:`ssr_tf.serving.client`: :class:`~ssr_tf.serving.client.RankingClient` and
  ``ssr_tf score``.
* :mod:`ssr_tf.serving.local`: :class:`~ssr_tf.serving.local.LocalScorer`, the same scoring
  through an export on disk with no server (``ssr_tf score --saved_model``).
* :mod:`ssr_tf.serving.bench`: ``ssr_tf bench serving`` (latency / QPS over loopback).
* :mod:`ssr_tf.serving.toy_model`: a tiny SavedModel with the export contract's
  signatures, for tests and smoke runs.
"""
