"""Raw ids -> rows of a fixed-capacity embedding table, assigned while training.

A ``dynamic`` categorical feature needs no vocabulary. Its table has
``1 + fallback_rows + capacity`` rows: row 0 is the missing value, rows 1..F are shared
by ids without a row of their own (row 1 + hash(id) mod F), rows F+1..F+capacity belong to
admitted ids. The map lives in the graph, in core TensorFlow ops only (a
``tf.lookup.experimental.MutableHashTable`` from id to row, plus variables), so a
SavedModel holding it loads in plain TensorFlow and in stock TF Serving.

Training steps (``training=True``) update the map; evaluation, export and serving only
read it:

1. Admission: every occurrence of an id without a row is counted in a count-min sketch
   (2 x max(2 capacity, 1024) int32 counters). Once its estimate reaches ``admit_after``
   it gets a row in that same step. The sketch never under-counts; a collision can only
   admit an id early. It does not decay: once far more distinct ids than 2 x capacity
   have passed, most counters are non-zero and admission approaches admit-on-first-sight
   (benchmarks/RESULTS_scale_quality.md). Counts are kept after an eviction, so an evicted id that comes
   back is admitted at once.
2. Allocation: free rows first; when every row is taken, the rows whose ids were seen
   least recently (a per-row "last seen" step; ties go to the lower row) are taken from
   them. An eviction frees at least capacity / 64 rows at once (one top-k over the
   last-seen steps); the rows not needed at once wait in a reserve for the next new ids,
   so the O(capacity) search runs once per capacity / 64 admissions, not every step.
   Rows seen in the current batch are never evicted; ids that find no row in a step use
   their fallback row for that step.
3. A row given to a new id is returned as ``reassigned`` so the caller resets its values
   and optimizer slots (FeatureEmbedding and RankingModel.train_step do).

String ids are keyed by their 64-bit fingerprint (``tf.strings.to_hash_bucket_fast`` into
2^63 - 1 buckets): two strings share a row only if their fingerprints collide (about
n^2 / 2^64 over n distinct strings: ~1e-6 for 5 million).
"""
from __future__ import annotations

import tensorflow as tf

_EMPTY_KEY = -1     # the key of a missing value
_SKETCH_DEPTH = 2
EVICT_CHUNK_DIVISOR = 64    # an eviction frees at least capacity / 64 rows


def fingerprint(values: tf.Tensor) -> tf.Tensor:
  """Dynamic-id keys: int64 ids as they are (negative: missing -> -1), strings by their
  64-bit fingerprint ("" -> -1)."""
  if values.dtype == tf.string:
    keys = tf.strings.to_hash_bucket_fast(values, 2**63 - 1)
    return tf.where(tf.equal(values, ""), tf.constant(_EMPTY_KEY, tf.int64), keys)
  values = tf.cast(values, tf.int64)
  return tf.where(values < 0, tf.constant(_EMPTY_KEY, tf.int64), values)


@tf.keras.utils.register_keras_serializable(package="ssr_tf")
class DynamicIdTable(tf.keras.layers.Layer):
  """Keys (see :func:`fingerprint`) -> embedding rows of one dynamic feature.

  Args:
    capacity: rows for admitted ids.
    admit_after: occurrences in training batches before an id gets its own row.
    fallback_rows: rows shared by ids without their own row.
  """

  def __init__(self, capacity: int, admit_after: int = 1, fallback_rows: int = 1, **kwargs):
    super().__init__(trainable=False, **kwargs)
    self.capacity = int(capacity)
    self.admit_after = int(admit_after)
    self.fallback_rows = int(fallback_rows)
    self.sketch_width = max(2 * self.capacity, 1024)
    self.evict_chunk = max(1, self.capacity // EVICT_CHUNK_DIVISOR)
    self.table = tf.lookup.experimental.MutableHashTable(
        tf.int64, tf.int64, default_value=-1, name=f"{self.name}_map")

  @property
  def first_row(self) -> int:
    """The table row of slot 0 (rows before it: missing and fallback)."""
    return 1 + self.fallback_rows

  def build(self, input_shape):
    def weight(name, shape, dtype):
      return self.add_weight(name, shape=shape, dtype=dtype, initializer="zeros",
                             trainable=False)
    self.slot_keys = weight("slot_keys", [self.capacity], tf.int64)       # key of each slot
    self.last_seen = weight("last_seen", [self.capacity], tf.int64)       # step, 0 = never
    self.used = weight("used", [], tf.int64)                               # slots handed out
    self.step = weight("step", [], tf.int64)                               # training calls
    self.admissions = weight("admissions", [], tf.int64)
    self.evictions = weight("evictions", [], tf.int64)
    self.reserve = weight("reserve", [self.evict_chunk], tf.int64)         # freed slots
    self.reserve_count = weight("reserve_count", [], tf.int64)
    self.sketch = (weight("sketch", [_SKETCH_DEPTH, self.sketch_width], tf.int32)
                   if self.admit_after > 1 else None)
    super().build(input_shape)

  @tf.autograph.experimental.do_not_convert
  def call(self, keys: tf.Tensor, training=None):
    """Rows for `keys` (any shape); with training also updates the map and returns
    (rows, reassigned rows)."""
    if not training:
      return self.lookup(keys)
    return self.assign(keys)

  def _fallback(self, keys: tf.Tensor) -> tf.Tensor:
    if self.fallback_rows == 1:
      return tf.where(keys >= 0, tf.ones_like(keys), tf.zeros_like(keys))
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.as_string(keys), self.fallback_rows)
    return tf.where(keys >= 0, bucket + 1, tf.zeros_like(keys))

  def _find(self, keys: tf.Tensor) -> tf.Tensor:
    """Rows of admitted keys, -1 for the rest."""
    found = self.table.lookup(keys)
    found.set_shape(keys.shape)
    return found

  def lookup(self, keys: tf.Tensor) -> tf.Tensor:
    """Read-only: own row, else fallback row, else 0 for missing."""
    keys = tf.cast(keys, tf.int64)
    rows = self._find(keys)
    return tf.where(rows >= 0, rows, self._fallback(keys))

  def _count(self, keys: tf.Tensor, occurrences: tf.Tensor) -> tf.Tensor:
    """Adds `occurrences` of `keys` to the sketch; returns their estimated counts."""
    text = tf.strings.as_string(keys)
    cells = []
    for d in range(_SKETCH_DEPTH):
      col = tf.strings.to_hash_bucket_strong(text, self.sketch_width, key=[d + 1, 0x5eed])
      cells.append(tf.stack([tf.fill(tf.shape(col), tf.constant(d, tf.int64)), col], axis=1))
    cells = tf.concat(cells, axis=0)
    self.sketch.scatter_nd_add(cells, tf.tile(occurrences, [_SKETCH_DEPTH]))
    estimates = tf.reshape(tf.gather_nd(self.sketch, cells), [_SKETCH_DEPTH, -1])
    return tf.reduce_min(estimates, axis=0)

  def _evict(self, short: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Frees max(`short`, evict_chunk) rows of the least recently seen ids (never this
    step's); returns `short` of them (fewer if too few are old enough) and keeps the rest
    in the reserve for later steps."""
    def take():
      k = tf.cast(tf.minimum(tf.maximum(short, self.evict_chunk), self.capacity), tf.int32)
      _, slots = tf.math.top_k(-self.last_seen, k=k)        # oldest first, ties: lower slot
      slots = tf.cast(slots, tf.int64)
      slots = tf.boolean_mask(slots, tf.gather(self.last_seen, slots) < step)
      self.table.remove(tf.gather(self.slot_keys, slots))
      self.evictions.assign_add(tf.size(slots, out_type=tf.int64))
      n = tf.minimum(short, tf.size(slots, out_type=tf.int64))
      rest = slots[n:]
      self.reserve.scatter_update(tf.IndexedSlices(rest, tf.range(tf.size(rest,
                                                                          out_type=tf.int64))))
      self.reserve_count.assign(tf.size(rest, out_type=tf.int64))
      self.last_seen.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(rest), step), rest))
      return slots[:n]
    return tf.cond(short > 0, take, lambda: tf.zeros([0], tf.int64))

  def _allocate(self, wanted: tf.Tensor, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(never used slots, slots taken from other ids) for up to `wanted` new ids."""
    free = tf.minimum(wanted, self.capacity - self.used)
    fresh = self.used + tf.range(free, dtype=tf.int64)
    self.used.assign_add(free)
    self.last_seen.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(fresh), step), fresh))
    count = self.reserve_count.read_value()
    taken = tf.minimum(wanted - free, count)
    reserved = self.reserve[count - taken:count][::-1]
    self.reserve_count.assign_sub(taken)
    evicted = self._evict(wanted - free - taken, step)
    return fresh, tf.concat([reserved, evicted], axis=0)

  def assign(self, keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Training lookup: admits and places new ids, then returns (rows, reassigned rows)."""
    keys = tf.cast(keys, tf.int64)
    flat = tf.reshape(keys, [-1])
    step = self.step.assign_add(1)
    unique, index = tf.unique(flat)
    present = unique >= 0
    found = self._find(unique)
    known = found >= 0
    self.last_seen.scatter_update(tf.IndexedSlices(
        tf.fill(tf.shape(tf.boolean_mask(found, known)), step),
        tf.boolean_mask(found, known) - self.first_row))
    candidates = present & ~known
    new_keys = tf.boolean_mask(unique, candidates)
    if self.sketch is not None:
      occurrences = tf.math.unsorted_segment_sum(tf.ones_like(index, tf.int32), index,
                                                 tf.size(unique, out_type=tf.int32))
      estimates = self._count(new_keys, tf.boolean_mask(occurrences, candidates))
      new_keys = tf.boolean_mask(new_keys, estimates >= self.admit_after)
    fresh, reused = self._allocate(tf.size(new_keys, out_type=tf.int64), step)
    slots = tf.concat([fresh, reused], axis=0)
    placed = new_keys[:tf.size(slots)]
    self.table.insert(placed, slots + self.first_row)
    self.slot_keys.scatter_update(tf.IndexedSlices(placed, slots))
    self.last_seen.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(reused), step), reused))
    self.admissions.assign_add(tf.size(slots, out_type=tf.int64))
    rows = tf.gather(self.lookup(unique), index)
    return tf.reshape(rows, tf.shape(keys)), reused + self.first_row

  def stats(self) -> dict[str, tf.Tensor]:
    """Occupancy (share of rows held by admitted ids), admissions and evictions so far."""
    held = self.used - self.reserve_count
    return {"occupancy": tf.cast(held, tf.float32) / float(self.capacity),
            "admissions": self.admissions, "evictions": self.evictions}

  def get_config(self):
    return {**super().get_config(), "capacity": self.capacity,
            "admit_after": self.admit_after, "fallback_rows": self.fallback_rows}
