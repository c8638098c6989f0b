"""`ssr_tf data convert --format interactions`: an event log -> ranking records with
behaviour histories.

Input: events (user, item, time, label) in --input files, optional item and user side
tables, and a mapping (pipelines/interactions_mapping.py). Output: the usual converter
folder (train/valid/test shards of tf.Example, vocab/, spec.yaml, stats.json,
config.yaml), where every event's record also holds its user's history:
``hist_<item>`` (the last `history.length` items strictly before the event, most recent
first) and ``hist_<feature>`` for the item side features listed in
`history.side_features`.

Passes over the events:

1. A scan: parses every row (bad rows are reported here), decides the id columns'
   dtypes, counts the time values (``--split time`` thresholds), checks side table keys
   and whether the rows are in time order.
2. Events in time order: the rows themselves when they already are; else an external
   sort: chunks of ``--sort_rows`` events are sorted in memory and spilled to temporary
   files, which ``heapq.merge`` reads back in order.

Events are ordered by (time, user, item, label), so the output does not depend on the
input's row order. All events of one time value are emitted before any of them enters a
history: events with equal times never see each other. Memory: the users' histories
(users x length), one sort chunk, the events of one time value, the side tables and the
vocabulary counts; not the number of events.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import heapq
import itertools
import json
import os
import pickle
import shutil
import time
from typing import Any, Callable, Iterator, Optional

import yaml

from ssr_tf.errors import ConfigError, DataError
from ssr_tf.pipelines import interactions_mapping as im
from ssr_tf.pipelines import local, outputs, sources, transforms
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines.schema import OutField
from ssr_tf.pipelines.transforms import SPLITS

DNN = {"name": "dnn", "embedding_dim": 16, "backbone": {"hidden_units": [400, 400, 400]}}
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


# ---------------------------------------------------------------------------------------
# Records with histories.


class Histories:
  """Per user, the last `length` history items, most recent first."""

  def __init__(self, st: Setup):
    h = st.mapping.history
    self.length = h.length if h else 0
    self.positives_only = h.positives_only if h else True
    self.state: dict[Any, collections.deque] = {}
    self.items = st.items
    self.sides = st.hist_sides
    fields = st.item_fields
    self.missing = [im.missing_value(fields[k]) if K == 0 else
                    (-1 if fields[k].dtype == "int64" else "") for k, K in self.sides]
    self.no_side = tuple(im.missing_value(f) for f in fields)

  def of(self, user: Any) -> list:
    d = self.state.get(user)
    return list(d) if d else []

  def add(self, group: list[Event]) -> None:
    if not self.length:
      return
    for _, user, item, label in group:
      if self.positives_only and label != 1.0:
        continue
      d = self.state.get(user)
      if d is None:
        d = self.state[user] = collections.deque(maxlen=self.length)
      d.appendleft(item)


class HistoryEncoder:
  """The serialized tf.Example map entries of the history features.

  Each item's contribution to every history feature (its id; per side feature its value,
  or its values truncated / padded to K with the missing value) is encoded once and
  cached (one entry per item), so a record costs a join of cached bytes per feature.
  Entries use ExampleEncoder's wire format: int64 values packed, strings as a BytesList.
  """

  def __init__(self, st: Setup, hist: Histories):
    self.names = [f.name for f in st.hist_fields]
    self.heads = [b"\x0a" + transforms._vlen(len(n.encode())) + n.encode() + b"\x12"  # pylint: disable=protected-access
                  for n in self.names]
    self.ints = [f.dtype == "int64" for f in st.hist_fields]
    self.items, self.sides, self.no_side = st.items, hist.sides, hist.no_side
    self.missing = hist.missing
    self.cache: dict[Any, tuple[bytes, ...]] = {}

  def values(self, item: Any) -> list[list]:
    """Per history feature, the values `item` contributes."""
    row = self.items.get(item, self.no_side)
    out = [[item]]
    for (k, K), miss in zip(self.sides, self.missing):
      if K == 0:
        out.append([row[k]])
      else:
        v = list(row[k][:K])
        out.append(v + [miss] * (K - len(v)))
    return out

  def _chunks(self, item: Any) -> tuple[bytes, ...]:
    out = []
    for vs, is_int in zip(self.values(item), self.ints):
      if is_int:
        out.append(b"".join(transforms.varint(v) for v in vs))
      else:
        out.append(b"".join(transforms._ld(b"\x0a", v.encode()) for v in vs))  # pylint: disable=protected-access
    chunks = self.cache[item] = tuple(out)
    return chunks

  def encode(self, hist: list) -> bytes:
    """Map entries of the history features of one record (`hist`: items, latest first)."""
    get, make = self.cache.get, self._chunks
    rows = [get(x) or make(x) for x in hist]
    ld = transforms._ld  # pylint: disable=protected-access
    out = []
    for j, (head, is_int) in enumerate(zip(self.heads, self.ints)):
      payload = b"".join([r[j] for r in rows])
      if is_int:
        feature = ld(b"\x1a", ld(b"\x0a", payload) if rows else b"")
      else:
        feature = ld(b"\x0a", payload)
      out.append(ld(b"\x0a", head + transforms._vlen(len(feature)) + feature))  # pylint: disable=protected-access
    return b"".join(out)


def with_entries(record: bytes, entries: bytes) -> bytes:
  """tf.Example `record` (serialized) with more map entries appended."""
  i = 1
  while record[i] & 0x80:             # the varint length after the Example's field tag
    i += 1
  return transforms._ld(b"\x0a", record[i + 1:] + entries)  # pylint: disable=protected-access


def time_parts(t: float) -> dict[str, int]:
  import datetime as dt  # pylint: disable=import-outside-toplevel
  x = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
  return {"hour": x.hour, "weekday": x.weekday()}


# ---------------------------------------------------------------------------------------
# The run.


def check_args(args: argparse.Namespace) -> None:
  for flag, bad in (("--train_input/--valid_input/--test_input",
                     args.train_input or args.valid_input or args.test_input),
                    ("--spec", args.spec), ("--ids dynamic", args.ids != "vocab"),
                    (f"--runner {args.runner}", args.runner != "local")):
    if bad:
      raise ConfigError(f"{flag}: not supported by --format interactions (give the event "
                        "log as --input; local runner, counted vocabularies)")
  if not args.input:
    raise ConfigError("no input: give --input EVENTS.csv...")
  if args.sort_rows < 1:
    raise ConfigError(f"--sort_rows: must be >= 1, got {args.sort_rows}")


def convert_from_args(args: argparse.Namespace) -> dict:
  """Runs `ssr_tf data convert --format interactions` (flags already parsed and checked
  by convert._check); returns the summary line's dict."""
  from ssr_tf.pipelines import convert as convert_lib  # pylint: disable=import-outside-toplevel
  check_args(args)
  ratios = convert_lib._ratios(args.ratios)  # pylint: disable=protected-access
  m = im.load(args.mapping)
  options = sources.Options(
      min_count=args.min_count, num_buckets=args.num_buckets, max_len=args.max_len,
      shard_size=args.shard_size,
      compression="GZIP" if args.compression.lower() == "gzip" else "",
      gzip_level=args.gzip_level, skip_bad_rows=args.skip_bad_rows,
      batch_size=args.batch_size, epochs=args.epochs)
  if args.split == "time":
    def when(flag: str, s: Optional[str]):
      try:
        return None if s is None else im.parse_time(s)
      except ValueError as err:
        raise ConfigError(f"--{flag}: {err}") from None
    rule = transforms.SplitRule("time", ratios, args.seed,
                                valid_from=when("valid_from", args.valid_from),
                                test_from=when("test_from", args.test_from),
                                auto_time=args.valid_from is None)
  else:
    rule = transforms.SplitRule("random", ratios, args.seed)
  start = time.time()
  stats = run(m, args.input, args.output, rule, options, sort_rows=args.sort_rows,
              strict_keys=args.strict_keys, overwrite=args.overwrite,
              progress=not args.quiet, progress_every=args.progress_every)
  seconds = time.time() - start
  return {"output": args.output, "runner": "local", "rows": stats["rows"],
          "positives": stats["positives"], "skipped_rows": stats["skipped_rows"],
          "seconds": round(seconds, 2),
          "rows_per_s": round(stats["rows_total"] / max(seconds, 1e-9), 1),
          "config": os.path.join(args.output, "config.yaml")}


def run(m: im.InteractionMapping, inputs: list[str], out_dir: str,
        rule: transforms.SplitRule, options: sources.Options, sort_rows: int = 1_000_000,
        strict_keys: bool = False, overwrite: bool = False, progress: bool = True,
        progress_every: float = 5.0) -> dict:
  """Converts an event log into `out_dir`; returns the stats (also in stats.json).
  A failed run leaves nothing behind (the outputs are committed at the end)."""
  bad = BadRows(options.skip_bad_rows)
  st = make_setup(m, inputs, options.max_len, bad)
  sc = scan(st, bad, strict_keys, count_times=rule.auto_time)
  typed(st)
  st.bad_lines = bad.seen
  if rule.auto_time:
    rule.valid_from, rule.test_from = transforms.time_thresholds(sc.times, rule.ratios)
    rule.auto_time = False
  sc.times = {}
  created, tmp = local.missing_dirs(out_dir), None
  try:
    tmp = local.prepare_output(out_dir, overwrite)
    stats = _convert(st, sc, bad, rule, options, sort_rows, tmp, out_dir, progress,
                     progress_every)
    shutil.rmtree(os.path.join(tmp, "_sort"), ignore_errors=True)
    local.commit_output(tmp, out_dir)
  except BaseException:
    local.discard_output(tmp, created)
    raise
  return stats


def _convert(st: Setup, sc: Scan, bad: BadRows, rule: transforms.SplitRule,
             o: sources.Options, sort_rows: int, tmp: str, final_dir: str, progress: bool,
             every: float) -> dict:
  schema = schema_lib.Schema(st.fields, {"click": st.fields[-1].name}, st.fields[0].name,
                             st.mapping.events.time)
  acc = transforms.Accumulator(schema)
  encoder = transforms.ExampleEncoder(st.fields)
  writers = [local.ShardWriter(tmp, s, o.shard_size, o.compression, o.gzip_level)
             for s in SPLITS]
  hist = Histories(st)
  hist_encoder = HistoryEncoder(st, hist)
  tf_names = st.mapping.events.time_features
  L = hist.length
  lengths = [[0] * (L + 1) for _ in SPLITS]
  bar = local.Progress(0, every, progress)
  no_user = tuple(im.missing_value(f) for f in st.user_fields)
  events = typed_events(st)
  if not sc.in_order:
    events = sort_events(events, sort_rows, os.path.join(tmp, "_sort"))
  k = 0
  try:
    for group in by_time(events):
      t = group[0][0]
      parts = time_parts(t) if tf_names else {}
      tvals = [parts[n] for n in tf_names]
      for _, user, item, label in group:
        s = rule.random_split(k) if rule.kind == "random" else rule.assign(k, -1, t)
        k += 1
        values = ([user, item] + tvals + list(st.items.get(item, hist.no_side))
                  + list(st.users.get(user, no_user))
                  + [label])
        acc.add(s, values)
        record = encoder.encode(values)
        if L:
          h = hist.of(user)
          lengths[s][len(h)] += 1
          record = with_entries(record, hist_encoder.encode(h))
        writers[s].write(record)
      hist.add(group)
      bar.update(k, 0, len(bad.lines))
  finally:
    for w in writers:
      w.close()
  bar.update(k, 0, len(bad.lines), final=True)
  acc.flush()
  if acc.rows[0] == 0:
    raise DataError("the training split is empty (check --ratios / --split / the inputs); "
                    "vocabularies come from it")
  return _write_metadata(st, sc, bad, rule, o, acc, schema, lengths, hist, tmp, final_dir)


def _write_metadata(st: Setup, sc: Scan, bad: BadRows, rule: transforms.SplitRule,
                    o: sources.Options, acc: transforms.Accumulator,
                    schema: schema_lib.Schema, lengths: list[list[int]], hist: Histories,
                    tmp: str, final_dir: str) -> dict:
  """vocab/ (train counts), spec.yaml with the sequence features, stats.json and a
  config.yaml (DNN)."""
  plan = sources.Plan("interactions", None, [lay.file for lay in st.events], schema, rule, o)
  summaries = outputs.summarize_local(plan, acc, tmp)
  for name, K in ((st.item_fields[k].name, K) for k, K in st.hist_sides if K):
    summaries[name].max_len = K          # records pad history side values to K
  spec = outputs.build_spec(plan, summaries)
  time_feats = st.mapping.events.time_features
  for i, f in enumerate(spec.features):
    if f.name in time_feats:
      os.remove(os.path.join(tmp, "vocab", f"{f.name}.txt"))
      spec.features[i] = dataclasses.replace(f, vocab_file=None, min_count=0,
                                             num_buckets=im.TIME_FEATURES[f.name])
  d = yaml.safe_load(spec.to_yaml())
  if st.hist_fields:
    h = st.mapping.history
    item = st.fields[1].name
    d["features"].append({"name": st.hist_fields[0].name, "type": "sequence",
                          "dtype": st.item_dtype, "share_with": item, "max_len": h.length,
                          "pooling": h.pooling})
    for f, s in zip(st.hist_fields[1:], h.side_features):
      d["features"].append({"name": f.name, "type": "sequence", "dtype": f.dtype,
                            "share_with": s, "max_len": h.length,
                            "side_of": st.hist_fields[0].name})
  outputs.write_text(os.path.join(tmp, "spec.yaml"),
                     "# written by `ssr_tf data convert --format interactions`; vocab_file "
                     "paths are relative to this file\n"
                     + yaml.safe_dump(d, sort_keys=False))
  stats = outputs.build_stats(plan, acc, summaries, bad.lines)
  stats["skipped_rows"] = len(bad.lines)
  for f in time_feats:                  # identity ids, no vocabulary
    d = stats["features"][f]
    stats["features"][f] = {"type": d["type"], "dtype": d["dtype"],
                            "num_buckets": im.TIME_FEATURES[f],
                            "missing_rate": d["missing_rate"]}
  users = set().union(*(acc.counts[s][0] for s in range(3)))
  items = set().union(*(acc.counts[s][1] for s in range(3)))
  inter: dict[str, Any] = {
      "events": sum(acc.rows), "input_in_time_order": sc.in_order,
      "distinct_users": len(users), "distinct_items": len(items),
      "missing_keys": {}}
  if rule.kind == "time":
    inter["time_cell_seconds"] = sc.time_step or None   # None: thresholds from exact times
  del users, items
  for kind, count, keys in (("items", sc.missing_items, sc.missing_item_keys),
                            ("users", sc.missing_users, sc.missing_user_keys)):
    table = getattr(st.mapping, kind)
    if table is not None:
      inter["missing_keys"][kind] = {"table": table.path, "events": count,
                                     "distinct": len(keys),
                                     "examples": sorted(map(str, keys))[:10]}
  if st.hist_fields:
    h = st.mapping.history
    inter["history"] = {
        "feature": st.hist_fields[0].name, "length": h.length,
        "positives_only": h.positives_only, "side_features": list(h.side_features),
        "users_with_history": len(hist.state),
        "mean_len": {sp: outputs._rate(sum(n * c for n, c in enumerate(lengths[k])),  # pylint: disable=protected-access
                                       acc.rows[k]) for k, sp in enumerate(SPLITS)},
        "empty_rate": {sp: outputs._rate(lengths[k][0], acc.rows[k])  # pylint: disable=protected-access
                       for k, sp in enumerate(SPLITS)},
        "len_counts": {sp: {str(n): c for n, c in enumerate(lengths[k]) if c}
                       for k, sp in enumerate(SPLITS)}}
  stats["interactions"] = inter
  outputs.write_text(os.path.join(tmp, "stats.json"),
                     json.dumps(stats, indent=2) + "\n")
  config = outputs.build_config(plan, final_dir)
  config["model"] = dict(DNN, backbone=dict(DNN["backbone"]))
  outputs.write_text(os.path.join(tmp, "config.yaml"),
                     "# written by `ssr_tf data convert`: ssr_tf train --config <this file>\n"
                     + yaml.safe_dump(config, sort_keys=False))
  return stats
