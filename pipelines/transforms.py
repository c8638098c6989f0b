"""Preprocessing rules shared by the local and the Beam runner (pure Python, no TF).

* Split: a row's split is a function of (seed, row index) only (random split), of its
  time value (time split), or of its input file (pre-split files); never of the runner.
* Numerics: ``t = sign(v) * log1p(|v|)``; boundaries are quantiles of ``t`` over the
  training split, placed half-way between neighbouring distinct values (so no value sits
  on a boundary), de-duplicated and increasing. ``t`` is counted on a grid of 1e-4 so the
  memory is bounded by the number of grid cells, not by the rows.
* Categoricals: values are counted on the training split; a vocabulary file lists
  ``value<TAB>count`` by decreasing count (ties: increasing value) and the model maps
  values seen ``<= min_count`` times (and unseen or missing values) to the OOV row 0.
  Fields without a vocabulary (``--ids dynamic``) are not counted: only their missing
  values are.
* Records: tf.Example protos encoded directly (byte-identical whatever the runner).
"""
from __future__ import annotations

import dataclasses
import math
import struct
from fractions import Fraction
from itertools import chain
from operator import itemgetter
from typing import Any, Sequence

from ssr_tf.errors import ConfigError
from ssr_tf.pipelines.schema import OutField, Schema

try:
  from collections import _count_elements  # the C counting loop of Counter.update
except ImportError:  # pragma: no cover  (other Python implementations)
  def _count_elements(mapping, iterable):
    for x in iterable:
      mapping[x] = mapping.get(x, 0) + 1

SPLITS = ("train", "valid", "test")
GRID = 10_000           # numeric histogram cells per unit of log1p
_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------
# Split assignment.


def mix64(seed: int, row: int) -> int:
  """splitmix64 of (seed, row): a uniform 64-bit integer, the same on every machine."""
  z = (row * 0x9E3779B97F4A7C15 + seed * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _M64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
  return z ^ (z >> 31)


@dataclasses.dataclass
class SplitRule:
  """Which split (0 train, 1 valid, 2 test) a row goes to.

  Attributes:
    kind: random (8:1:1 by hash of seed and row index), time (by time_column value) or
      files (by the input flag a file came from).
    ratios: train:valid:test weights of the random split.
    seed: seed of the random split.
    valid_from: time split: first time value of the validation split (None: never).
    test_from: time split: first time value of the test split (None: never).
    auto_time: time split: thresholds still to be found from the data (a pre-pass).
    carve_valid: files split without validation files: valid is drawn from the training
      files' rows with probability valid / (train + valid) of `ratios`.
  """
  kind: str = "random"
  ratios: tuple = (8, 1, 1)
  seed: int = 42
  valid_from: Any = None
  test_from: Any = None
  carve_valid: bool = False
  auto_time: bool = False

  def __post_init__(self):
    if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or sum(self.ratios) <= 0:
      raise ConfigError(f"--ratios: need three non-negative weights, got {self.ratios}")
    r = [Fraction(x) for x in self.ratios]
    total = sum(r)
    self._t1 = int(r[0] / total * 2 ** 64)
    self._t2 = int((r[0] + r[1]) / total * 2 ** 64)
    self._carve = int(r[1] / (r[0] + r[1]) * 2 ** 64) if r[0] + r[1] > 0 else 0

  def random_split(self, row: int) -> int:
    h = mix64(self.seed, row)
    return 0 if h < self._t1 else (1 if h < self._t2 else 2)

  def assign(self, row: int, source: int, time_value: Any) -> int:
    """Split of global row `row` (source: split of its file, -1 if not pre-split)."""
    if self.kind == "random":
      return self.random_split(row)
    if self.kind == "time":
      if time_value == "" or time_value is None:
        raise ValueError("missing time value")
      try:
        if self.valid_from is None or time_value < self.valid_from:
          return 0
        return 1 if self.test_from is None or time_value < self.test_from else 2
      except TypeError:
        raise ValueError(f"time value {time_value!r} cannot be compared with the split "
                         f"thresholds {self.valid_from!r}, {self.test_from!r}") from None
    if source == 0 and self.carve_valid and mix64(self.seed, row) < self._carve:
      return 1
    return source

  def describe(self) -> dict:
    d: dict[str, Any] = {"kind": self.kind, "seed": self.seed}
    if self.kind == "random" or self.carve_valid:
      d["ratios"] = list(self.ratios)
    if self.kind == "time":
      d.update(valid_from=self.valid_from, test_from=self.test_from)
    return d


def time_thresholds(hist: dict, ratios: Sequence[float]) -> tuple[Any, Any]:
  """valid_from / test_from from a histogram of time values: for each cut (train share,
  train + valid share of `ratios`) the time value whose "rows before it" is closest to the
  cut (ties: the later one); None (= never) when all rows are closer. Rows with equal time
  values always share a split."""
  keys = sorted(hist)
  if not keys:
    raise ConfigError("--split time: no time values found")
  total = sum(hist.values())
  before, acc = [], 0
  for k in keys:
    before.append((acc, k))
    acc += hist[k]
  before.append((total, None))
  out = []
  for cut in (ratios[0] / sum(ratios), (ratios[0] + ratios[1]) / sum(ratios)):
    best = min(before, key=lambda bk: (abs(bk[0] - cut * total), -bk[0]))
    out.append(best[1])
  if out[0] is None:
    out[1] = None
  return out[0], out[1]


# ---------------------------------------------------------------------------------------
# Numerics.


def signed_log1p(v: float) -> float:
  return math.copysign(math.log1p(abs(v)), v)


def grid_cell(v: float) -> int:
  """Histogram cell of raw value `v` (its signed log1p on a 1/GRID grid); +-inf get cells
  beyond every finite value's."""
  t = math.copysign(math.log1p(abs(v)), v)
  if math.isinf(t):
    return int(math.copysign(8_000_000, t))
  return math.floor(t * GRID + 0.5)


def boundaries_from_hist(hist: dict[int, int], num_buckets: int) -> list[float]:
  """Quantile bucket boundaries (on the log1p scale) from a grid-cell histogram.

  With at most `num_buckets` distinct cells every cell gets its own bucket; otherwise the
  boundary after cell i is placed where the cumulative count first reaches k/num_buckets
  of the rows, for k = 1..num_buckets-1. Boundaries sit half-way between neighbouring
  cells; duplicates collapse. No values: [0.0]; one distinct value c: [c].
  """
  cells = sorted(c for c, n in hist.items() if n > 0)
  if not cells:
    return [0.0]
  if len(cells) == 1:
    return [round(cells[0] / GRID, 5)]
  if len(cells) <= num_buckets:
    picks = range(len(cells) - 1)
  else:
    total = sum(hist[c] for c in cells)
    picks, acc, k, i = [], 0, 1, 0
    for i, c in enumerate(cells[:-1]):
      acc += hist[c]
      while k < num_buckets and acc >= k * total / num_buckets:
        if not picks or picks[-1] != i:
          picks.append(i)
        k += 1
  return [round((cells[i] + cells[i + 1]) / (2 * GRID), 5) for i in picks]


def bucket_of(v: float, boundaries: Sequence[float]) -> int:
  """The model's bucket of raw value v: 0 missing, else 1 + #boundaries <= t."""
  if v != v:
    return 0
  t = signed_log1p(v)
  return 1 + sum(1 for b in boundaries if t >= b)


def sorted_vocab(counts: dict) -> list[tuple[Any, int]]:
  """(value, count) by decreasing count, ties by increasing value."""
  return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------------------------------
# tf.Example encoding (protobuf wire format).


def varint(n: int) -> bytes:
  if n < 0:
    n += 1 << 64
  out = bytearray()
  while n > 0x7F:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


_V = [varint(n) for n in range(1 << 14)]


def _vlen(n: int) -> bytes:
  return _V[n] if n < 16384 else varint(n)


def _ld(tag: bytes, payload: bytes) -> bytes:
  return tag + _vlen(len(payload)) + payload


_PACK_F = struct.Struct("<f").pack
_INF = float("inf")


def _f32(v: float) -> bytes:
  try:
    return _PACK_F(v)
  except OverflowError:          # beyond float32: +-inf
    return _PACK_F(math.copysign(_INF, v))


class ExampleEncoder:
  """Serializes a row (values in schema order) to a tf.Example: the single float features
  first (packed in one struct call), then the others in schema order.

  Byte layout: Example{1: Features{1: map entry{1: key, 2: Feature}}}; Feature holds
  bytes_list (1), float_list (2, packed) or int64_list (3, packed).
  """

  def __init__(self, fields: Sequence[OutField]):
    self._fields = list(fields)
    self._encs, self._prefix = [], {}
    for i, f in enumerate(fields):
      head = b"\x0a" + _vlen(len(f.name.encode())) + f.name.encode() + b"\x12"
      if f.dtype == "float32":
        self._prefix[i] = self._entry(head, b"\x12\x06\x0a\x04" + b"\0\0\0\0")[:-4]
        self._encs.append(self._float(head))
      elif f.kind == "multi_categorical":
        self._encs.append(self._ints(head) if f.dtype == "int64" else self._strs(head))
      elif f.dtype == "int64":
        self._encs.append(self._int(head))
      else:
        self._encs.append(self._str(head))
    self._encode = self._compile(fields)

  @staticmethod
  def _entry(head: bytes, feature: bytes) -> bytes:
    return _ld(b"\x0a", head + _vlen(len(feature)) + feature)

  def _float(self, head: bytes):
    prefix = self._entry(head, b"\x12\x06\x0a\x04" + b"\0\0\0\0")[:-4]
    return lambda v: prefix + _f32(v)

  def _int(self, head: bytes):
    table = [b""] + [self._entry(head, b"\x1a" + bytes([n + 2]) + b"\x0a" + bytes([n])
                                 + b"\0" * n)[:-n] for n in range(1, 11)]

    def enc(v: int) -> bytes:
      vb = _V[v] if 0 <= v < 16384 else varint(v)
      return table[len(vb)] + vb
    return enc

  def _str(self, head: bytes):
    entry = self._entry
    prefixes: dict[int, bytes] = {}    # the bytes before the value depend on its length only

    def enc(v: str) -> bytes:
      b = v.encode()
      n = len(b)
      prefix = prefixes.get(n)
      if prefix is None:
        prefix = prefixes[n] = entry(head, _ld(b"\x0a", _ld(b"\x0a", b)))[:-n or None]
        if n == 0:
          prefix = prefixes[n] = entry(head, _ld(b"\x0a", _ld(b"\x0a", b)))
      return prefix + b
    return enc

  def _ints(self, head: bytes):
    entry = self._entry

    def enc(vs: list) -> bytes:
      payload = b"".join(_V[v] if 0 <= v < 16384 else varint(v) for v in vs)
      return entry(head, _ld(b"\x1a", _ld(b"\x0a", payload) if vs else b""))
    return enc

  def _strs(self, head: bytes):
    entry = self._entry

    def enc(vs: list) -> bytes:
      return entry(head, _ld(b"\x0a", b"".join(_ld(b"\x0a", v.encode()) for v in vs)))
    return enc

  def encode(self, values: Sequence[Any]) -> bytes:
    """Serialized tf.Example of one row (single floats first, in one struct.pack)."""
    return self._encode(values)

  def _compile(self, fields: Sequence[OutField]):
    env: dict[str, Any] = {"_ld": _ld, "_slow": self._slow_floats}
    floats = [i for i, f in enumerate(fields)
              if f.dtype == "float32" and f.kind != "multi_categorical"]
    others = [i for i in range(len(fields)) if i not in floats]
    parts = []
    if floats:
      fmt = "<"
      args = []
      for i in floats:
        prefix = self._prefix[i]
        env[f"P{i}"] = prefix
        fmt += f"{len(prefix)}sf"
        args += [f"P{i}", f"v[{i}]"]
      env["_S"] = struct.Struct(fmt).pack
      parts.append("_f")
      head = (f"  try:\n    _f = _S({', '.join(args)})\n"
              f"  except OverflowError:\n    _f = _slow(v)\n")
    else:
      head = ""
    for i in others:
      env[f"E{i}"] = self._encs[i]
      parts.append(f"E{i}(v[{i}])")
    src = (f"def encode(v):\n{head}  return _ld(b'\\x0a', b''.join(("
           + ", ".join(parts) + ",)))\n")
    exec(compile(src, "<example encoder>", "exec"), env)  # pylint: disable=exec-used
    self._floats = floats
    return env["encode"]

  def _slow_floats(self, v: Sequence[Any]) -> bytes:
    return b"".join(self._prefix[i] + _f32(v[i]) for i in self._floats)

  def __getstate__(self):
    return {"fields": self._fields}

  def __setstate__(self, state):
    self.__init__(state["fields"])


# ---------------------------------------------------------------------------------------
# Statistics (mergeable: the Beam runner adds up per-chunk accumulators).


RAW_CAP = 20_000      # distinct raw values of a numeric kept before folding into grid cells
FLUSH_ROWS = 4096     # rows buffered per split before they are counted


class Accumulator:
  """Counts of one stream of rows: rows and positives per split, per feature missing
  values, value counts per split (vocabularies, OOV rates), train numeric histograms and
  longest train sequence. Memory: distinct values and grid cells, not rows.

  Fields in `uncounted` (schema indices: dynamic ids, hashed sequences) keep no value
  counts (their `counts` entries stay empty), only missing values, values seen and the
  longest sequence, so their memory does not grow with their distinct values.

  `add` buffers rows; every FLUSH_ROWS rows of a split are counted column by column with
  C-level counting (collections' _count_elements). Numeric values are counted raw (cheap
  for integer-valued columns) until a feature has RAW_CAP distinct ones, then folded into
  grid cells; `cells(i)` is the same either way. Call `flush()` before reading counts
  (merge, cells and pickling do it).
  """

  def __init__(self, schema: Schema, uncounted: frozenset = frozenset()):
    fields = schema.fields
    self.names = [f.name for f in fields]
    self.tasks = list(schema.labels)
    self._label_idx = [self.names.index(schema.labels[t]) for t in self.tasks]
    cats = [(i, -1 if f.dtype == "int64" else "") for i, f in enumerate(fields)
            if f.kind == "categorical"]
    self._cat = [(i, mv) for i, mv in cats if i not in uncounted]
    self._cat_missing = [(i, mv) for i, mv in cats if i in uncounted]
    self._multi = [i for i, f in enumerate(fields) if f.kind == "multi_categorical"]
    self._multi_counted = {i for i in self._multi if i not in uncounted}
    self._num = [i for i, f in enumerate(fields) if f.kind == "numeric"]
    n = len(fields)
    self.rows = [0, 0, 0]
    self.positives = [[0] * len(self.tasks) for _ in SPLITS]
    self.missing = [[0] * n for _ in SPLITS]
    self.values = [[0] * n for _ in SPLITS]         # multi: values seen
    counted = [i for i, _ in self._cat] + [i for i in self._multi if i in self._multi_counted]
    self.counts: list[dict[int, dict]] = [{i: {} for i in counted} for _ in SPLITS]
    self.hist: dict[int, dict[int, int]] = {i: {} for i in self._num}
    self.raw: dict[int, dict[float, int]] = {i: {} for i in self._num}
    self.max_len = {i: 0 for i in self._multi}
    self.bad = 0
    self._buf: list[list] = [[], [], []]

  def __getstate__(self):
    self.flush()
    return dict(self.__dict__)

  def add(self, s: int, v: Sequence[Any]) -> None:
    """Counts row values `v` (schema order) into split `s` (buffered)."""
    buf = self._buf[s]
    buf.append(v)
    if len(buf) >= FLUSH_ROWS:
      self._flush(s)

  def flush(self) -> None:
    for s in range(3):
      if self._buf[s]:
        self._flush(s)

  def _flush(self, s: int) -> None:
    rows, self._buf[s] = self._buf[s], []
    self.rows[s] += len(rows)
    miss = self.missing[s]
    for k, i in enumerate(self._label_idx):
      self.positives[s][k] += int(sum(map(itemgetter(i), rows)))
    for i, mv in self._cat:
      c = self.counts[s][i]
      _count_elements(c, map(itemgetter(i), rows))
      miss[i] += c.pop(mv, 0)
    for i, mv in self._cat_missing:
      miss[i] += list(map(itemgetter(i), rows)).count(mv)
    for i in self._multi:
      seqs = list(map(itemgetter(i), rows))
      lens = list(map(len, seqs))
      miss[i] += lens.count(0)
      self.values[s][i] += sum(lens)
      if i in self._multi_counted:
        _count_elements(self.counts[s][i], chain.from_iterable(seqs))
      if s == 0:
        self.max_len[i] = max(self.max_len[i], max(lens))
    for i in self._num:
      col: dict = {}
      _count_elements(col, map(itemgetter(i), rows))
      nan = [x for x in col if x != x]
      for x in nan:
        miss[i] += col.pop(x)
      if s != 0:
        continue
      r = self.raw[i]
      for x, n in col.items():
        r[x] = r.get(x, 0) + n
      if len(r) > RAW_CAP:
        self.fold(i)

  def fold(self, i: int) -> None:
    """Moves numeric feature i's raw value counts into grid cells."""
    h = self.hist[i]
    for x, n in self.raw[i].items():
      q = grid_cell(x)
      h[q] = h.get(q, 0) + n
    self.raw[i].clear()

  def cells(self, i: int) -> dict[int, int]:
    """Grid-cell histogram of numeric feature i over the training split."""
    self.flush()
    out = dict(self.hist[i])
    for x, n in self.raw[i].items():
      q = grid_cell(x)
      out[q] = out.get(q, 0) + n
    return out

  def merge(self, other: "Accumulator") -> "Accumulator":
    self.flush()
    other.flush()
    for s in range(3):
      self.rows[s] += other.rows[s]
      for k in range(len(self.tasks)):
        self.positives[s][k] += other.positives[s][k]
      for i in range(len(self.names)):
        self.missing[s][i] += other.missing[s][i]
        self.values[s][i] += other.values[s][i]
      for i, c in other.counts[s].items():
        mine = self.counts[s][i]
        for x, n in c.items():
          mine[x] = mine.get(x, 0) + n
    for i in self._num:
      for q, n in other.hist[i].items():
        self.hist[i][q] = self.hist[i].get(q, 0) + n
      for x, n in other.raw[i].items():
        self.raw[i][x] = self.raw[i].get(x, 0) + n
      if len(self.raw[i]) > RAW_CAP:
        self.fold(i)
    for i, m in other.max_len.items():
      self.max_len[i] = max(self.max_len[i], m)
    self.bad += other.bad
    return self

  def clear_counts(self) -> None:
    """Drops value counts and histograms (kept: the scalar counts), in place."""
    self.flush()
    for s in range(3):
      for c in self.counts[s].values():
        c.clear()
    for i in self._num:
      self.hist[i].clear()
      self.raw[i].clear()
