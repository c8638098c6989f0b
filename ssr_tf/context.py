"""Context + candidates serving: request-level features parsed and embedded once per request.

An online ranking request is one context (the user and the request: the spec's features
with ``context: true``) and N candidates. The ``context_candidates`` signature of an export
takes the context as one serialized tf.Example (``context``, DT_STRING ``[]`` or ``[1]``)
and the candidates as N (``candidates``, DT_STRING ``[N]``). It parses and embeds the
context features from the batch-1 context and scores

  x_i = [e_f(context) for context f ; e_g(candidate_i) for candidate g]  (spec order),
  p(x_i) = model(x_i) = serving_default(merge(context, candidate_i))

A backbone with ``splits_first_layer`` (DNN, SSR-D) takes the context and candidate fields
apart: x_i W = x_ctx W_ctx + x_cand,i W_cand, the context term once per request; the
others run on ``[N, F, dim]`` with the context fields broadcast to the N candidates.

Merge rule (TF Serving's for ExampleListWithContext): a feature set on a candidate wins
over the context's value. When some candidate sets a context feature, the context features
are parsed from the N merged examples instead (one row per candidate, as the flat path
does; a feature with no values counts as not set); only that parse sits in a tf.cond.

The graph fails with INVALID_ARGUMENT on a ``context`` of more than one example and on
zero candidates; candidate features set on the context example are not read (``ssr_tf
serve`` refuses such requests before the model runs: serving/examples.py). Only core
TensorFlow ops: stock TF Serving loads it.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf.errors import ConfigError
from ssr_tf.features import FeatureSpec

SIGNATURE = "context_candidates"
FEATURES_SIGNATURE = "context_features"
CONTEXT_INPUT = "context"
CANDIDATES_INPUT = "candidates"
_DTYPES = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}


def context_names(spec: FeatureSpec) -> list[str]:
  """The spec's context features (``context: true``), in spec order."""
  return [f.name for f in spec.features if getattr(f, "context", False)]


def check_context_spec(spec: FeatureSpec, where: str = "spec") -> None:
  """At least one feature must stay a candidate feature when some are context ones."""
  names = context_names(spec)
  if names and len(names) == len(spec.features):
    raise ConfigError(f"{where}: every feature has 'context: true'; candidates need at "
                      "least one feature of their own")


def _sub_spec(spec: FeatureSpec, names: set[str]) -> FeatureSpec:
  return dataclasses.replace(spec, features=[f for f in spec.features if f.name in names])


def _model_inputs(parsed: dict, spec: FeatureSpec, names: set[str]) -> dict:
  """Parsed values of `names` as the model takes them (multi-valued ones dense), shaped
  by the full spec (a sequence's shape comes from the feature it shares a table with)."""
  out = {}
  for f in spec.features:
    if f.name in names:
      shape = spec.value_shape(f)
      out[f.name] = (data_lib._dense_multi(f, parsed[f.name], shape)  # pylint: disable=protected-access
                     if shape else parsed[f.name])
  return out


def _presence_schema(spec: FeatureSpec, names: set[str]) -> dict:
  """VarLen parse entries that tell whether an example sets each of `names`."""
  return {f.name: tf.io.VarLenFeature(_DTYPES[f.dtype]) for f in spec.features
          if f.name in names}


def _set_anywhere(parsed: dict, names: list[str]) -> tf.Tensor:
  """bool scalar: some parsed example has a value for one of the features `names`."""
  indices = tf.concat([parsed[n].indices for n in names], axis=0)     # [values, 2]
  return tf.size(indices) > 0


def score_context_candidates(model, spec: FeatureSpec, context: tf.Tensor,
                             candidates: tf.Tensor, split: bool = True) -> dict:
  """{click_prob, pay_prob}: float32 ``[N]`` for one context and N candidates.

  The context features come from the batch-1 context (embedded once, broadcast), or,
  when some candidate sets one of them (merge rule), from the N merged examples. With
  `split` and a backbone that ``splits_first_layer``, its first layer takes the context
  fields' term once per context row (x W = x_ctx W_ctx + x_cand W_cand); else the
  backbone runs on the broadcast fields.
  """
  ctx_names = context_names(spec)
  ctx_set = set(ctx_names)
  cand_names = [f.name for f in spec.features if f.name not in ctx_set]
  ctx_schema = data_lib.parse_schema(_sub_spec(spec, ctx_set), with_labels=False)
  cand_schema = data_lib.parse_schema(_sub_spec(spec, set(cand_names)), with_labels=False)

  context = tf.reshape(context, [-1])
  checks = [tf.debugging.assert_equal(
      tf.size(context), 1,
      message=f"input {CONTEXT_INPUT}: one serialized tf.Example per request (shape [] or "
              "[1])")]
  n = tf.shape(candidates)[0]
  checks.append(tf.debugging.assert_positive(
      n, message=f"input {CANDIDATES_INPUT}: 0 candidates; a request needs at least one"))
  with tf.control_dependencies(checks):
    context = tf.identity(context)
  # the candidates' features, and the context features where a candidate overrides them
  parsed_cand = tf.io.parse_example(candidates, {**cand_schema,
                                                 **_presence_schema(spec, ctx_set)})
  overridden = _set_anywhere(parsed_cand, ctx_names)

  def shared() -> dict:            # [1] per context feature
    return _model_inputs(tf.io.parse_example(context, ctx_schema), spec, ctx_set)

  def merged() -> dict:            # [N]: serialized protos concatenate to their merge
    joined = tf.strings.join([context[0], candidates])     # (a key set twice keeps the last)
    return _model_inputs(tf.io.parse_example(joined, ctx_schema), spec, ctx_set)

  ctx_features = tf.cond(overridden, merged, shared)
  cand_features = _model_inputs(parsed_cand, spec, set(cand_names))
  fields = model.embedding.context_fields(ctx_features, cand_features, n)
  index = shared_field_index(spec)
  if not (split and index and model.backbone.built       # built: the weights to split exist
          and getattr(model.backbone, "splits_first_layer", False)):
    return probabilities_from_fields(model, fields)
  # the context fields' rows: 1 (shared) or N (merged); their first-layer term once per row
  rows = tf.shape(ctx_features[spec.features[index[0]].name])[0]
  rest = [i for i in range(len(spec.features)) if i not in set(index)]
  h = model.backbone.split_first_layer(tf.gather(fields[:rows], index, axis=1),
                                       tf.gather(fields, rest, axis=1), index)
  return probabilities_from_backbone(model, h)


def shared_field_index(spec: FeatureSpec) -> list[int]:
  """Positions (spec order) of the fields equal for every candidate of a request: the
  context features except sequences (pooled per candidate, against candidate fields)."""
  return [i for i, f in enumerate(spec.features)
          if getattr(f, "context", False) and not f.is_sequence]


def probabilities_from_fields(model, fields: tf.Tensor) -> dict:
  """RankingModel's outputs from field embeddings ``[batch, F, dim]`` (inference): the
  backbone, the heads and ``model.probabilities``, as ``RankingModel.logits`` after its
  embedding step."""
  return probabilities_from_backbone(model, model.backbone(fields, training=False))


def probabilities_from_backbone(model, h) -> dict:
  """RankingModel's outputs from the backbone's output (inference): the heads and
  ``model.probabilities``."""
  if not isinstance(h, dict):
    h = {t: h for t in model.tasks}
  logits = {"click": tf.squeeze(model.click_head(h["click"]), -1)}
  if model.has_pay:
    logits["pay"] = tf.squeeze(model.pay_head(h["pay"]), -1)
  return model.probabilities(logits)


def input_signature() -> dict[str, tf.TensorSpec]:
  """The signature's inputs: ``context`` (any rank, one element), ``candidates`` [N]."""
  return {CONTEXT_INPUT: tf.TensorSpec(None, tf.string, name=CONTEXT_INPUT),
          CANDIDATES_INPUT: tf.TensorSpec([None], tf.string, name=CANDIDATES_INPUT)}


def features_outputs(spec: FeatureSpec) -> dict[str, tf.Tensor]:
  """The ``context_features`` signature's outputs: one per context feature (its position
  in the spec), so GetModelMetadata tells clients which features go in the context."""
  index = {f.name: i for i, f in enumerate(spec.features)}
  return {name: tf.constant(index[name], tf.int64, name=f"context_feature_{i}")
          for i, name in enumerate(context_names(spec))}
