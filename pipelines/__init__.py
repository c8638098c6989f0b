"""Raw click logs -> sharded tf.Example TFRecords + feature spec (`ssr_tf data convert`).

Layout: this folder is the repository's top-level ``pipelines/``; setup.py maps it to the
package ``ssr_tf.pipelines`` (``package_dir={"ssr_tf.pipelines": "pipelines"}``), so its
modules are imported as ``ssr_tf.pipelines.<module>`` (``from ssr_tf.pipelines import
local``), never as ``pipelines``, both in an editable install and from the wheel.

Modules:
  schema:     input formats (Criteo, Avazu, Taobao, generic CSV + YAML mapping) and the
              compiled row parser.
  transforms: the preprocessing rules shared by both runners: split assignment, signed
              log1p + quantile boundaries, vocabularies with min_count, tf.Example encoding,
              mergeable statistics.
  local:      the streaming single-process runner (one read of the input; two when a
              time split must first find its thresholds).
  outputs:    spec.yaml, vocab/, stats.json and a ready-to-train config.yaml.
  beam_pipeline: the same transforms on Apache Beam (optional: a separate environment from requirements-beam.txt).
  convert, bench: the `ssr_tf data convert` and `ssr_tf bench convert` commands.

See docs/data.md.
"""
