"""Raw feature values -> embedding ids -> field embeddings ``[batch, F, dim]``.

The lookups live inside the model, so a SavedModel scores raw tf.Example records and
training and serving share one definition of OOV, hashing and bucketing.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssr_tf.features import ATTENTION_POOLINGS, DEFAULT_ATTENTION_UNITS, Feature, FeatureSpec
from ssr_tf.config import from_dict
from ssr_tf.layers.dynamic_ids import DynamicIdTable, fingerprint
from ssr_tf.layers.sequence import TargetAttention


def spec_to_config(spec: FeatureSpec) -> dict:
  return dataclasses.asdict(spec)


def spec_from_config(config: dict) -> FeatureSpec:
  return from_dict(FeatureSpec, config)


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class FeatureEncoder(tf.keras.layers.Layer):
  """Maps each raw feature to embedding ids (row 0 = OOV/missing) or a standardised value.

  categorical: num_buckets: v in [0, N) -> v + 1; vocab_file: i-th kept value -> i + 1;
  hash_buckets: hash(str(v)) mod H + 1; dynamic: the id's key (int64 id, or a string's
  64-bit fingerprint; -1 if missing), which DynamicIdTable maps to a row. numeric log_bucketize:
  bucketize(sign(v) log1p|v|) + 1 (NaN -> 0); dense: (v - mean) / std (NaN -> 0).
  A sequence is encoded as its share_with feature, value by value.
  """

  def __init__(self, spec: FeatureSpec | dict, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.spec = spec if isinstance(spec, FeatureSpec) else spec_from_config(spec)
    self._tables = {}
    for f in self.spec.features:
      if f.vocab_file is not None:
        vocab = f.vocabulary()
        key_dtype = tf.int64 if f.dtype == "int64" else tf.string
        keys = tf.constant(vocab if vocab else ([-1] if f.dtype == "int64" else [""]),
                           dtype=key_dtype)
        values = tf.range(1, len(vocab) + 1, dtype=tf.int64) if vocab else tf.constant([0], tf.int64)
        self._tables[f.name] = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=0)

  def encode(self, f: Feature, v: tf.Tensor) -> tf.Tensor:
    if f.type == "numeric":
      v = tf.cast(v, tf.float32)
      missing = tf.math.is_nan(v)
      if f.transform == "dense":
        return tf.where(missing, 0.0, (v - f.mean) / f.std)
      t = tf.sign(v) * tf.math.log1p(tf.abs(v))
      ids = tf.cast(tf.raw_ops.Bucketize(input=tf.where(missing, 0.0, t),
                                         boundaries=list(map(float, f.boundaries))), tf.int64) + 1
      return tf.where(missing, tf.zeros_like(ids), ids)
    if f.num_buckets is not None:
      v = tf.cast(v, tf.int64)
      return tf.where((v >= 0) & (v < f.num_buckets), v + 1, tf.zeros_like(v))
    if f.vocab_file is not None:
      return self._tables[f.name].lookup(v)
    if f.dynamic is not None:
      return fingerprint(v)
    s = v if v.dtype == tf.string else tf.strings.as_string(v)
    ids = tf.strings.to_hash_bucket_fast(s, f.hash_buckets) + 1
    empty = tf.equal(s, "") if v.dtype == tf.string else tf.less(v, 0)
    return tf.where(empty, tf.zeros_like(ids), ids)

  def call(self, inputs: dict) -> dict:
    return {f.name: self.encode(self.spec.rows_of(f), inputs[f.name])
            for f in self.spec.features}

  def get_config(self):
    return {**super().get_config(), "spec": spec_to_config(self.spec)}


class _StepState:
  """Per-call scratch space that Keras does not track (not part of any checkpoint)."""

  def __init__(self):
    self.reassigned: dict = {}


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class FeatureEmbedding(tf.keras.layers.Layer):
  """Encoded features -> field embeddings ``[batch, F, dim]`` (the paper's x is their concat).

  Categorical: table lookup; multi-valued: mean/sum over present ids; dense numeric:
  v * w_f + b_f. A sequence looks its items up in its share_with feature's table (a
  multi-valued item is the mean of its present values) and is pooled to one field: target
  attention (TargetAttention, against the share_with feature's field) or the mean/sum of
  present items; side_of members are pooled with their main sequence's weights, and the
  attention sees the group's per-item embeddings and targets concatenated (see
  docs/sequences.md). ``l2`` adds l2 * sum(e^2) / batch over the rows used in the batch.
  Dynamic features look their rows up in a DynamicIdTable, which training calls update;
  a row given to a new id is re-initialised, and ``reassigned`` holds those rows per
  table variable for the optimizer to reset its slots.
  """

  def __init__(self, spec: FeatureSpec | dict, dim: int = 16, l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec if isinstance(spec, FeatureSpec) else spec_from_config(spec)
    self.dim = int(dim)
    self.l2 = float(l2)
    self.encoder = FeatureEncoder(self.spec, name="encoder")
    self.id_tables = {f.name: DynamicIdTable(f.dynamic.capacity, f.dynamic.admit_after,
                                             f.dynamic.fallback_rows, name=f"ids_{f.name}")
                      for f in self.spec.features if f.dynamic is not None}
    self.attention = {g[0].name: TargetAttention(g[0].attention_units or
                                                 DEFAULT_ATTENTION_UNITS,
                                                 softmax=g[0].pooling == "attention_softmax",
                                                 name=f"attention_{g[0].name}")
                      for g in self.spec.sequence_groups() if
                      (g[0].pooling or "attention") in ATTENTION_POOLINGS}
    self._step_state = _StepState()

  def build(self, input_shape):
    self.tables = {}
    for f in self.spec.features:
      if f.is_sequence:
        continue                                  # uses its share_with feature's table
      if f.type == "numeric" and f.transform == "dense":
        self.tables[f.name] = self.add_weight(
            f"dense_{f.name}", shape=[2, self.dim],
            initializer=tf.keras.initializers.RandomNormal(stddev=0.05))
      else:
        self.tables[f.name] = self.add_weight(
            f"emb_{f.name}", shape=[f.table_size(), self.dim],
            initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05))
    for ids in self.id_tables.values():
      ids.build(None)
    super().build(input_shape)

  @property
  def num_fields(self) -> int:
    return len(self.spec.features)

  def dynamic_rows(self, f: Feature, keys: tf.Tensor, training) -> tf.Tensor:
    """Rows of a dynamic feature; in training, rows given to new ids are re-initialised
    (stateless random values seeded by the map's step and the feature's position)."""
    id_table = self.id_tables[f.name]
    if not training:
      return id_table(keys, training=False)
    rows, reassigned = id_table(keys, training=True)
    table = self.tables[f.name]
    seed = tf.stack([id_table.step, tf.constant(self.spec.features.index(f), tf.int64)])
    fresh = tf.random.stateless_uniform(tf.stack([tf.size(reassigned), self.dim]), seed,
                                        minval=-0.05, maxval=0.05, dtype=table.dtype)
    table.scatter_update(tf.IndexedSlices(fresh, reassigned))
    self._step_state.reassigned[f.name] = (table, reassigned)
    return rows

  @property
  def reassigned(self) -> dict[str, tuple[tf.Variable, tf.Tensor]]:
    """{feature: (table, rows given to new ids)} of the latest training call."""
    return self._step_state.reassigned

  def history_items(self, f: Feature, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A sequence's per-position embeddings ``[batch, L, dim]``, present positions
    ``[batch, L]`` (bool) and its L2 term (squares of the present rows)."""
    rows = tf.nn.embedding_lookup(self.tables[f.share_with], ids)  # [batch, L(, K), dim]
    present = ids > 0                                              # [batch, L(, K)]
    mask = tf.cast(present, rows.dtype)[..., None]
    penalty = tf.reduce_sum(tf.square(rows * mask)) if self.l2 else 0.0
    if ids.shape.rank == 3:                     # multi-valued items: mean over present values
      items = tf.reduce_sum(rows * mask, axis=2) / tf.maximum(tf.reduce_sum(mask, axis=2), 1.0)
      return items, tf.reduce_any(present, axis=2), penalty
    return rows, present, penalty

  def pool_group(self, group: list[Feature], encoded: dict, fields: dict) -> tuple[dict, tf.Tensor]:
    """{member: [batch, dim]} for a main sequence and its side_of members (the main
    sequence first), and their L2. Positions whose main item is row 0 are masked."""
    items, masks, penalty = [], [], 0.0
    for f in group:
      e, present, p = self.history_items(f, encoded[f.name])
      items.append(e)
      masks.append(present)
      penalty += p
    main, mask = group[0], masks[0]                                # the main items' positions
    history = tf.concat(items, axis=-1)                            # [batch, L, n * dim]
    if main.name in self.attention:
      target = tf.concat([fields[f.share_with] for f in group], axis=-1)   # [batch, n * dim]
      pooled = self.attention[main.name](history, target, mask=mask)     # [batch, n * dim]
    else:
      m = tf.cast(mask, history.dtype)[..., None]
      pooled = tf.reduce_sum(history * m, axis=1)
      if main.pooling == "mean":
        pooled = pooled / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)
    return dict(zip([f.name for f in group], tf.split(pooled, len(group), axis=-1))), penalty

  def call(self, inputs: dict, training=None):
    encoded = self.encoder(inputs)
    fields, penalty = {}, 0.0
    self._step_state.reassigned = {}
    for f in self.spec.features:
      if f.is_sequence:
        continue
      ids = encoded[f.name]
      table = self.tables[f.name]
      if f.dynamic is not None:
        ids = self.dynamic_rows(f, ids, training)
      if f.type == "numeric" and f.transform == "dense":
        e = ids[:, None] * table[0][None] + table[1][None]          # [batch, dim]
      elif f.type == "multi_categorical":
        rows = tf.nn.embedding_lookup(table, ids)                 # [batch, len, dim]
        mask = tf.cast(ids > 0, rows.dtype)[..., None]
        e = tf.reduce_sum(rows * mask, axis=1)
        if f.combiner == "mean":
          e = e / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        if self.l2:
          penalty += tf.reduce_sum(tf.square(rows * mask))
      else:
        e = tf.nn.embedding_lookup(table, ids)                    # [batch, dim]
        if self.l2:
          penalty += tf.reduce_sum(tf.square(e))
      fields[f.name] = e
    for group in self.spec.sequence_groups():
      pooled, p = self.pool_group(group, encoded, fields)
      fields.update(pooled)
      penalty += p
    out = tf.stack([fields[f.name] for f in self.spec.features], axis=1)   # [batch, F, dim]
    if self.l2:
      batch = tf.cast(tf.shape(out)[0], tf.float32)
      self.add_loss(self.l2 * penalty / batch)
    return out

  def get_config(self):
    return {**super().get_config(), "spec": spec_to_config(self.spec), "dim": self.dim,
            "l2": self.l2}

  # -- context serving (ssr_tf/context.py): request-level features embedded once ----------
  def context_fields(self, context: dict, candidates: dict, rows: tf.Tensor) -> tf.Tensor:
    """Field embeddings ``[rows, F, dim]`` for inference when the features in `context`
    hold one row shared by every candidate (or one row per candidate) and those in
    `candidates` hold `rows` rows.

    e_f = embed(encode(v_f)) of the single context row, broadcast to all `rows`
    (e_f[i] = e_f[0]); candidate fields as in ``call``. A context sequence is encoded once
    and its ids broadcast, then pooled per candidate (target attention sees the
    candidate). Equals ``call`` on the merged rows; no l2 loss, no id admission.
    """
    encoded, fields, shared = {}, {}, {}
    for f in self.spec.features:
      in_context = f.name in context
      ids = self.encoder.encode(self.spec.rows_of(f),
                                context[f.name] if in_context else candidates[f.name])
      if f.is_sequence:
        encoded[f.name] = (tf.broadcast_to(ids, tf.concat([[rows], tf.shape(ids)[1:]], 0))
                           if in_context else ids)
      elif in_context:
        shared[f.name] = self._inference_field(f, ids)
      else:
        fields[f.name] = self._inference_field(f, ids)
    if shared:                                  # one broadcast for all context fields
      block = tf.stack(list(shared.values()), axis=1)             # [1 or rows, Fc, dim]
      block = tf.broadcast_to(block, tf.concat([[rows], tf.shape(block)[1:]], 0))
      fields.update(zip(shared, tf.unstack(block, num=len(shared), axis=1)))
    for group in self.spec.sequence_groups():
      fields.update(self.pool_group(group, encoded, fields)[0])
    return tf.stack([fields[f.name] for f in self.spec.features], axis=1)   # [rows, F, dim]

  def _inference_field(self, f: Feature, ids: tf.Tensor) -> tf.Tensor:
    """One field's embedding ``[batch, dim]`` from its encoded ids (inference: the
    per-feature step of ``call``)."""
    if f.type not in ("categorical", "numeric", "multi_categorical"):
      raise ValueError(f"feature '{f.name}': context serving embeds categorical, "
                       f"multi_categorical and numeric features, not {f.type}")
    table = self.tables[f.name]
    if f.dynamic is not None:
      ids = self.dynamic_rows(f, ids, training=False)
    if f.type == "numeric" and f.transform == "dense":
      return ids[:, None] * table[0][None] + table[1][None]
    if f.type == "multi_categorical":
      rows = tf.nn.embedding_lookup(table, ids)
      mask = tf.cast(ids > 0, rows.dtype)[..., None]
      e = tf.reduce_sum(rows * mask, axis=1)
      if f.combiner == "mean":
        e = e / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
      return e
    return tf.nn.embedding_lookup(table, ids)


def raw_input_signature(spec: FeatureSpec) -> dict[str, tf.TensorSpec]:
  """One TensorSpec per feature as the model takes it (multi-valued padded to max_len;
  sequences [None, max_len] or, for a multi_categorical target, [None, max_len, K])."""
  dtypes = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}
  sig = {}
  for f in spec.features:
    sig[f.name] = tf.TensorSpec([None, *spec.value_shape(f)], dtypes[f.dtype], name=f.name)
  return sig
