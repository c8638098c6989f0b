"""Events of `ssr_tf data convert --format interactions`: the resolved setup, the scan,
and the events in time order.

The scan (pass 1) parses every row (bad rows are reported here), decides the id columns'
dtypes (int64 when every value is an integer), counts the time values for the ``--split
time`` thresholds, checks side table keys and whether the rows are in time order. Then
the events are read again, in time order: the rows themselves when they already are;
else by an external sort: chunks of ``--sort_rows`` events are sorted in memory, spilled
to temporary files and merged by ``heapq.merge``. Events are ordered by (time, user,
item, label), so the output does not depend on the input's row order.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import pickle
from typing import Any, Iterator, Optional

from ssr_tf.errors import ConfigError, DataError
from ssr_tf.pipelines import interactions_mapping as im
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines import sources
from ssr_tf.pipelines.schema import OutField

SPILL_BLOCK = 4096              # events per pickle record of a spill file
TIME_CELLS = 200_000            # distinct time values counted before they are coarsened
Event = tuple                   # (time, user, item, label)


@dataclasses.dataclass
class Setup:
  """The resolved conversion: files, fields, side tables and settings."""
  mapping: im.InteractionMapping
  events: list[im.TableLayout]
  cols: tuple[int, int, int, int]           # user, item, time, label column indices
  label_min: Optional[float]
  fields: list[OutField]                    # record fields counted by the Accumulator
  item_fields: list[OutField]
  user_fields: list[OutField]
  hist_fields: list[OutField]               # hist_<item>, hist_<side feature> ...
  hist_sides: list[tuple[int, int]]         # (index into item side values, K or 0)
  items: dict = dataclasses.field(default_factory=dict)
  users: dict = dataclasses.field(default_factory=dict)
  user_dtype: str = "int64"
  item_dtype: str = "int64"
  bad_lines: set = dataclasses.field(default_factory=set)   # (path, line) of bad rows


class BadRows:
  """Bad rows by file:line, up to --skip_bad_rows of them; one more fails the run."""

  def __init__(self, budget: int):
    self.budget, self.lines, self.seen = budget, [], set()

  def __call__(self, path: str, line: int, why: str) -> None:
    if len(self.lines) >= self.budget:
      raise DataError(sources.bad_row_message(path, line, why, self.budget))
    self.lines.append(f"{path}:{line}: {why}")
    self.seen.add((path, line))


# ---------------------------------------------------------------------------------------
# Setup: mapping -> files and fields.


def make_setup(m: im.InteractionMapping, inputs: list[str], max_len: int,
               on_bad: BadRows) -> Setup:
  e = m.events
  lays = [im.layout(e, p) for p in inputs]
  names = lays[0].file.names
  for lay in lays[1:]:
    if lay.file.names != names:
      raise DataError(f"{lay.file.path}: its columns {lay.file.names} differ from "
                      f"{lays[0].file.path}'s {names}")
  cols = tuple(lays[0].index(c, k, "mapping") for c, k in (
      (e.user, "events.user"), (e.item, "events.item"), (e.time, "events.time"),
      (e.label.column, "events.label.column")))
  item_fields = im.side_fields(m.items, max_len) if m.items else []
  user_fields = im.side_fields(m.users, max_len) if m.users else []
  label = e.label.name or (e.label.column if e.label.min is None else "label")
  fields = ([OutField(e.user, "categorical", "int64", e.user),
             OutField(e.item, "categorical", "int64", e.item)]
            + [OutField(t, "categorical", "int64", e.time) for t in e.time_features]
            + item_fields + user_fields + [OutField(label, "label", "float32", label)])
  hist_fields, hist_sides = [], []
  h = m.history
  if h is not None:
    hist_fields.append(OutField(f"hist_{e.item}", "multi_categorical", "int64", e.item,
                                max_len=h.length))
    by_name = {f.name: k for k, f in enumerate(item_fields)}
    for s in h.side_features:
      f = item_fields[by_name[s]]
      if f.kind == "numeric":
        raise ConfigError(f"--mapping: mapping history.side_features: {s!r} is numeric; "
                          "only categorical item features come along in histories")
      hist_fields.append(OutField(f"hist_{s}", "multi_categorical", f.dtype, f.column,
                                  max_len=h.length))
      hist_sides.append((by_name[s], f.max_len if f.kind == "multi_categorical" else 0))
  seen: dict[str, str] = {}
  for f in fields + hist_fields:
    if f.name in seen:
      raise ConfigError(f"--mapping: two outputs are named {f.name!r} (rename one with "
                        "`name:` in the mapping)")
    seen[f.name] = f.kind
  st = Setup(m, lays, cols, e.label.min, fields, item_fields, user_fields, hist_fields,
             hist_sides)
  if m.items:
    st.items = im.read_table(m.items, "items", item_fields, on_bad)
  if m.users:
    st.users = im.read_table(m.users, "users", user_fields, on_bad)
  return st


def typed(st: Setup) -> None:
  """Sets the id fields' dtypes (found by the scan) and re-keys the side tables by the
  typed ids (a string id column keeps string keys)."""
  for k, dtype in ((0, st.user_dtype), (1, st.item_dtype)):
    st.fields[k] = dataclasses.replace(st.fields[k], dtype=dtype)
  if st.hist_fields:
    st.hist_fields[0] = dataclasses.replace(st.hist_fields[0], dtype=st.item_dtype)
  if st.item_dtype == "string":
    st.items = {str(k): v for k, v in st.items.items()}
  if st.user_dtype == "string":
    st.users = {str(k): v for k, v in st.users.items()}


# ---------------------------------------------------------------------------------------
# Reading events.


def _parse(st: Setup, r: list[str]) -> tuple[Any, str, str, float]:
  """(time, user text, item text, label) of one row split into fields (ValueError)."""
  ui, ii, ti, li = st.cols
  ncols = len(st.events[0].file.names)
  if len(r) != ncols:
    raise schema_lib.RowError(f"expected {ncols} fields, found {len(r)}")
  user, item = r[ui], r[ii]
  e = st.mapping.events
  if user == "":
    raise schema_lib.RowError(f"column {e.user!r}: missing user id")
  if item == "":
    raise schema_lib.RowError(f"column {e.item!r}: missing item id")
  try:
    t = im.parse_time(r[ti])
  except ValueError as err:
    raise schema_lib.RowError(f"column {e.time!r}: {err}") from None
  s = r[li]
  try:
    if st.label_min is None:
      label = schema_lib.parse_label(s)
    else:
      label = 1.0 if schema_lib.parse_float(s) >= st.label_min else 0.0
      if s == "":
        raise ValueError("missing label")
  except ValueError as err:
    raise schema_lib.RowError(f"column {e.label.column!r}: {err}") from None
  return t, user, item, label


def raw_events(st: Setup, bad: Optional[BadRows]) -> Iterator[tuple]:
  """(path, line, time, user text, item text, label) of every good row. Bad rows go to
  `bad` (the scan); without it they are skipped when the scan reported them
  (st.bad_lines)."""
  for lay in st.events:
    path = lay.file.path
    for line_no, text in im.lines(lay.file):
      if bad is None and (path, line_no) in st.bad_lines:
        continue
      try:
        if text is None:
          raise schema_lib.RowError("not UTF-8 text")
        t, user, item, label = _parse(st, lay.split(text))
      except ValueError as err:
        if bad is not None:
          bad(path, line_no, str(err))
          continue
        raise DataError(f"{path}:{line_no}: {err}") from None
      yield path, line_no, t, user, item, label


@dataclasses.dataclass
class Scan:
  """What the first pass learns."""
  rows: int = 0
  in_order: bool = True
  times: dict = dataclasses.field(default_factory=dict)
  time_step: float = 0          # times are counted in cells of this many seconds (0: exact)
  largest_group: int = 0        # most events sharing one time value (held together)
  missing_items: int = 0
  missing_users: int = 0
  missing_item_keys: set = dataclasses.field(default_factory=set)
  missing_user_keys: set = dataclasses.field(default_factory=set)


def coarsen(times: dict, step: float) -> dict:
  """The time histogram `times` in cells of `step` seconds (keyed by each cell's start)."""
  out: dict = {}
  for t, n in times.items():
    k = (t // step) * step
    out[k] = out.get(k, 0) + n
  return out


def scan(st: Setup, bad: BadRows, strict_keys: bool, count_times: bool) -> Scan:
  """Pass 1: checks every row; sets the id dtypes; time order and, with `count_times`,
  the time histogram (the --split time thresholds). The histogram keeps at most
  TIME_CELLS cells: beyond that its cells double in width (1, 2, 4, ... seconds), so a
  threshold is the start of a cell and events of one cell share a split."""
  sc = Scan()
  times, step = sc.times, 0
  user_int = item_int = True
  last = None
  tables = [(st.mapping.items, st.items, 1, "missing_items", "missing_item_keys"),
            (st.mapping.users, st.users, 0, "missing_users", "missing_user_keys")]
  for path, line_no, t, user, item, _ in raw_events(st, bad):
    sc.rows += 1
    if last is not None and t < last:
      sc.in_order = False
    last = t
    if count_times:
      k = t if not step else (t // step) * step
      times[k] = times.get(k, 0) + 1
      if len(times) > TIME_CELLS:
        while len(times) > TIME_CELLS // 2:
          step = step * 2 if step else 1
          times = coarsen(times, step)
    if user_int and not im.int_like(user):
      user_int = False
    if item_int and not im.int_like(item):
      item_int = False
    for table, values, k, count, keys in tables:
      if table is None:
        continue
      key = im.canonical(item if k else user)
      if key not in values:
        if strict_keys:
          raise DataError(f"{path}:{line_no}: {table.key} {key!r} is not in {table.path} "
                          "(--strict_keys)")
        setattr(sc, count, getattr(sc, count) + 1)
        getattr(sc, keys).add(key)
  if sc.rows == 0:
    raise DataError(f"{st.events[0].file.path}: no data rows in the input files")
  sc.times, sc.time_step = times, step
  st.user_dtype = "int64" if user_int else "string"
  st.item_dtype = "int64" if item_int else "string"
  return sc


def typed_events(st: Setup) -> Iterator[Event]:
  """(time, user, item, label) of the good rows, ids typed by the scan's dtypes."""
  u = int if st.user_dtype == "int64" else str
  i = int if st.item_dtype == "int64" else str
  for _, _, t, user, item, label in raw_events(st, None):
    yield t, u(user), i(item), label


def _spill(events: list, path: str) -> str:
  with open(path, "wb") as fh:
    for k in range(0, len(events), SPILL_BLOCK):
      pickle.dump(events[k:k + SPILL_BLOCK], fh, protocol=pickle.HIGHEST_PROTOCOL)
  return path


def _unspill(path: str) -> Iterator[Event]:
  with open(path, "rb") as fh:
    while True:
      try:
        block = pickle.load(fh)
      except EOFError:
        return
      yield from block


def sort_events(events: Iterator[Event], sort_rows: int, tmp_dir: str) -> Iterator[Event]:
  """`events` in (time, user, item, label) order: chunks of `sort_rows` sorted in memory,
  spilled to `tmp_dir` and merged (one chunk only: no spill)."""
  paths: list[str] = []
  while True:
    chunk = list(itertools.islice(events, sort_rows))
    if not chunk:
      break
    chunk.sort()
    if not paths and len(chunk) < sort_rows:
      yield from chunk
      return
    os.makedirs(tmp_dir, exist_ok=True)
    paths.append(_spill(chunk, os.path.join(tmp_dir, f"chunk-{len(paths):05d}.pkl")))
    del chunk
  yield from heapq.merge(*[_unspill(p) for p in paths])


def by_time(events: Iterator[Event]) -> Iterator[list[Event]]:
  """Groups of events with equal times, each sorted (input in time order)."""
  for _, group in itertools.groupby(events, key=lambda ev: ev[0]):
    yield sorted(group)
