"""The mapping of `ssr_tf data convert --format interactions`: events, side tables, history.

A mapping is YAML, checked key by key (unknown keys get the closest valid one)::

  events: {delimiter: ",", header: true, user: userId, item: movieId, time: timestamp,
           label: {column: rating, min: 4}, time_features: [hour, weekday]}
  items:  {path: movies.csv, key: movieId, features: [
             {column: genres, type: multi_categorical, dtype: string, sep: "|", max_len: 6},
             {column: title, name: release_year, type: categorical, dtype: int64,
              extract: "\\\\((\\\\d{4})\\\\)\\\\s*$"}]}
  users:  {path: users.csv, key: userId, features: [...]}
  history: {length: 20, positives_only: true, side_features: [genres]}

Relative side table paths resolve against the mapping file's folder. This module also
reads the side tables (whole, into memory: one entry per item or user) and parses times.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import difflib
import os
import re
from typing import Any, Callable, Optional

import yaml

from ssr_tf.config import from_dict
from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import POOLINGS
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines import sources

SIDE_TYPES = ("categorical", "multi_categorical", "numeric")
TIME_FEATURES = {"hour": 24, "weekday": 7}


@dataclasses.dataclass
class LabelMapping:
  """The label of an event.

  Attributes:
    column: input column; 0/1 values, or any number with `min`.
    min: when set, the label is 1 when the column's value is >= min, else 0.
    name: record key of the label (default: the column; "label" when `min` is set).
  """
  column: str = ""
  min: Optional[float] = None
  name: str = ""


@dataclasses.dataclass
class EventsMapping:
  """Columns of the event log (the --input files).

  Attributes:
    delimiter: field separator ("auto": tab when the first line has one, else comma).
    header: true (the first line names the columns) or false (then give `columns`).
    columns: column names when there is no header.
    strip: strip spaces around every field.
    user: user id column (a categorical feature of the same name, and the GAUC group).
    item: item id column (a categorical feature of the same name).
    time: event time column: unix seconds or ISO-8601 text (naive times are UTC).
    label: the label column, see LabelMapping.
    time_features: derived int64 categoricals of the event time (UTC): hour (0-23),
      weekday (0-6, Monday 0).
  """
  delimiter: str = ","
  header: Any = True
  columns: list[str] = dataclasses.field(default_factory=list)
  strip: bool = False
  user: str = ""
  item: str = ""
  time: str = ""
  label: Optional[LabelMapping] = None
  time_features: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SideFeature:
  """One feature of a side table, joined to events by the table's key.

  Attributes:
    column: column of the side table.
    name: feature name (default: the column).
    type: categorical | multi_categorical | numeric.
    dtype: int64 | string (categorical kinds).
    sep: multi_categorical: separator of the values inside the field.
    max_len: multi_categorical: values kept, the first ones (default --max_len).
    combiner: multi_categorical pooling in the model: mean | sum.
    extract: a regular expression with one group, searched in the column's text; the
      group is the value (no match: missing).
    min_count: overrides --min_count for this feature.
    num_buckets: numeric: overrides --num_buckets for this feature.
  """
  column: str = ""
  name: str = ""
  type: str = "categorical"
  dtype: str = "string"
  sep: str = "|"
  max_len: Optional[int] = None
  combiner: str = "mean"
  extract: str = ""
  min_count: Optional[int] = None
  num_buckets: Optional[int] = None


@dataclasses.dataclass
class SideTable:
  """An item or user table: one row per key.

  Attributes:
    path: the table's file (relative paths: against the mapping file's folder).
    key: the column holding the item (user) id.
    delimiter, header, columns, strip: as in EventsMapping.
    features: the features it adds to every event.
  """
  path: str = ""
  key: str = ""
  delimiter: str = ","
  header: Any = True
  columns: list[str] = dataclasses.field(default_factory=list)
  strip: bool = False
  features: list[SideFeature] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class HistoryMapping:
  """The behaviour history of each event.

  Attributes:
    length: items kept: the user's last `length` items strictly before the event.
    positives_only: only positively labelled events enter histories.
    side_features: item side features whose values come along per history item.
    pooling: the spec's pooling of the history sequence.
  """
  length: int = 20
  positives_only: bool = True
  side_features: list[str] = dataclasses.field(default_factory=list)
  pooling: str = "attention"


@dataclasses.dataclass
class InteractionMapping:
  """The whole mapping; `items`, `users` and `history` are optional."""
  events: Optional[EventsMapping] = None
  items: Optional[SideTable] = None
  users: Optional[SideTable] = None
  history: Optional[HistoryMapping] = None


def _close(word: str, options: list[str]) -> str:
  close = difflib.get_close_matches(word, options, n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def load(path: str) -> InteractionMapping:
  """Reads and checks a mapping file; side table paths become absolute."""
  where = f"--mapping {path}"
  if not path:
    raise ConfigError("--format interactions needs --mapping MAP.yaml (events, items, "
                      "users, history)")
  if not os.path.isfile(path):
    raise ConfigError(f"{where}: file not found")
  try:
    raw = yaml.safe_load(open(path, encoding="utf-8").read()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"{where}: not valid YAML ({e})".replace("\n", " ")) from None
  ev = raw.get("events") if isinstance(raw, dict) else None
  if isinstance(ev, dict) and isinstance(ev.get("label"), str):
    ev["label"] = {"column": ev["label"]}          # `label: click` shorthand
  try:
    m = from_dict(InteractionMapping, raw, path="")
  except ConfigError as e:
    msg = str(e).replace("config key", "mapping key")
    raise ConfigError(f"{where}: {msg}") from None
  _validate(m, where, os.path.dirname(os.path.abspath(path)))
  return m


def _validate(m: InteractionMapping, where: str, base: str) -> None:
  def need(value: Any, key: str, what: str) -> None:
    if value in (None, ""):
      raise ConfigError(f"{where}: mapping {key}: missing ({what})")

  need(m.events, "events", "the event log's columns: user, item, time, label")
  e = m.events
  need(e.user, "events.user", "the user id column")
  need(e.item, "events.item", "the item id column")
  need(e.time, "events.time", "the event time column")
  need(e.label, "events.label", "e.g. {column: click} or {column: rating, min: 4}")
  need(e.label.column, "events.label.column", "the 0/1 label or rating column")
  if e.header not in (True, False):
    raise ConfigError(f"{where}: mapping events.header: must be true or false")
  if e.header is False and not e.columns:
    raise ConfigError(f"{where}: mapping events.header: false needs events.columns")
  for i, t in enumerate(e.time_features):
    if t not in TIME_FEATURES:
      raise ConfigError(f"{where}: mapping events.time_features[{i}]: {t!r} is not one "
                        f"of {sorted(TIME_FEATURES)}{_close(str(t), list(TIME_FEATURES))}")
  for kind in ("items", "users"):
    table = getattr(m, kind)
    if table is None:
      continue
    need(table.path, f"{kind}.path", "the side table's file")
    need(table.key, f"{kind}.key", "the side table's id column")
    if table.header not in (True, False):
      raise ConfigError(f"{where}: mapping {kind}.header: must be true or false")
    if table.header is False and not table.columns:
      raise ConfigError(f"{where}: mapping {kind}.header: false needs {kind}.columns")
    if not os.path.isabs(table.path) and "://" not in table.path:
      table.path = os.path.normpath(os.path.join(base, table.path))
    if not sources.is_url(table.path) and not os.path.isfile(table.path):
      raise ConfigError(f"{where}: mapping {kind}.path: file not found: {table.path}")
    for i, f in enumerate(table.features):
      key = f"{kind}.features[{i}]"
      need(f.column, f"{key}.column", "the side table's column")
      if f.type not in SIDE_TYPES:
        raise ConfigError(f"{where}: mapping {key}.type: {f.type!r} is not one of "
                          f"{SIDE_TYPES}{_close(f.type, list(SIDE_TYPES))}")
      if f.dtype not in ("int64", "string"):
        raise ConfigError(f"{where}: mapping {key}.dtype: must be int64 or string")
      if f.combiner not in ("mean", "sum"):
        raise ConfigError(f"{where}: mapping {key}.combiner: must be mean or sum")
      for k in ("max_len", "num_buckets"):
        if getattr(f, k) is not None and getattr(f, k) <= 0:
          raise ConfigError(f"{where}: mapping {key}.{k}: must be > 0")
      if f.extract:
        try:
          groups = re.compile(f.extract).groups
        except re.error as err:
          raise ConfigError(f"{where}: mapping {key}.extract: not a regular expression "
                            f"({err})") from None
        if groups != 1:
          raise ConfigError(f"{where}: mapping {key}.extract: needs exactly one group "
                            f"(...), found {groups}")
  h = m.history
  if h is not None:
    if h.length < 1:
      raise ConfigError(f"{where}: mapping history.length: must be >= 1, got {h.length}")
    if h.pooling not in POOLINGS:
      raise ConfigError(f"{where}: mapping history.pooling: must be one of {POOLINGS}, got "
                        f"{h.pooling!r}")
    names = [f.name or f.column for f in (m.items.features if m.items else [])]
    for i, s in enumerate(h.side_features):
      if s not in names:
        raise ConfigError(f"{where}: mapping history.side_features[{i}]: {s!r} is not an "
                          f"item side feature (items.features: {names}){_close(s, names)}")


# ---------------------------------------------------------------------------------------
# Times, keys and side tables.


def parse_time(s: str) -> float | int:
  """Unix seconds of `s`: a number, or ISO-8601 text (naive times are UTC)."""
  try:
    v = float(s)
  except ValueError:
    v = None
  if v is not None:
    if v != v or v in (float("inf"), float("-inf")):
      raise ValueError(f"{s!r} is not unix seconds or ISO-8601 time")
    return int(v) if v.is_integer() else v
  try:
    t = dt.datetime.fromisoformat(s.strip().replace("Z", "+00:00"))
  except ValueError:
    raise ValueError(f"{s!r} is not unix seconds or ISO-8601 time") from None
  if t.tzinfo is None:
    t = t.replace(tzinfo=dt.timezone.utc)
  v = t.timestamp()
  return int(v) if v.is_integer() else v


def canonical(s: str) -> Any:
  """Join key of an id's text: the integer when it is one, else the text."""
  try:
    return int(s)
  except ValueError:
    return s


def int_like(s: str) -> bool:
  try:
    int(s)
    return True
  except ValueError:
    return False


@dataclasses.dataclass
class TableLayout:
  """A side table or event file's column layout (sources.InputFile) and row splitter."""
  file: sources.InputFile
  split: Callable[[str], list[str]]

  def index(self, column: str, key: str, where: str) -> int:
    names = self.file.names
    if column not in names:
      raise DataError(f"{self.file.path}: no column {column!r} ({where} {key})"
                      f"{_close(column, names)}; columns: {names[:50]}")
    return names.index(column)


def layout(table: Any, path: str) -> TableLayout:
  """Reads the header of `path` (`table` has delimiter, header, columns, strip)."""
  f = sources.describe_file(table, path, -1)
  delim, strip = f.delimiter, table.strip

  def split(line: str) -> list[str]:
    r = next(csv.reader([line], delimiter=delim)) if '"' in line else line.split(delim)
    return [x.strip() for x in r] if strip else r
  return TableLayout(f, split)


def lines(f: sources.InputFile):
  """(line number, text or None when not UTF-8) of the data lines of file `f`."""
  last = f.first_line - 1
  rows = 0
  try:
    fh = sources.open_binary(f.path)
  except OSError as e:
    raise sources.read_error(f.path, 0, 0, e) from None
  try:
    fh.seek(f.data_offset)
    for line_no, text, _ in sources.iter_lines(fh, f.data_offset, None, f.first_line):
      last, rows = line_no, rows + 1
      yield line_no, text
  except sources.READ_ERRORS as e:
    raise sources.read_error(f.path, last, rows, e) from None
  finally:
    fh.close()


def missing_value(f: schema_lib.OutField) -> Any:
  if f.kind == "multi_categorical":
    return []
  if f.kind == "numeric":
    return schema_lib.NAN
  return -1 if f.dtype == "int64" else ""


def side_fields(table: SideTable, max_len: int) -> list[schema_lib.OutField]:
  """Output fields of a side table's features."""
  out = []
  for f in table.features:
    name = f.name or f.column
    if f.type == "numeric":
      out.append(schema_lib.OutField(name, "numeric", "float32", f.column,
                                     num_buckets=f.num_buckets))
    elif f.type == "multi_categorical":
      out.append(schema_lib.OutField(name, "multi_categorical", f.dtype, f.column,
                                     sep=f.sep, max_len=f.max_len or max_len,
                                     combiner=f.combiner, min_count=f.min_count))
    else:
      out.append(schema_lib.OutField(name, "categorical", f.dtype, f.column,
                                     min_count=f.min_count))
  return out


def read_table(table: SideTable, kind: str, fields: list[schema_lib.OutField],
               on_bad: Callable[[str, int, str], None]) -> dict[Any, tuple]:
  """{canonical key: tuple of the features' values} of a side table. A repeated key is a
  bad row (the first one counts)."""
  lay = layout(table, table.path)
  path = lay.file.path
  ki = lay.index(table.key, f"{kind}.key", "mapping")
  cols = [lay.index(f.column, f"{kind}.features[{i}].column", "mapping")
          for i, f in enumerate(table.features)]
  regexes = [re.compile(f.extract) if f.extract else None for f in table.features]
  ncols = len(lay.file.names)
  out: dict[Any, tuple] = {}
  for line_no, text in lines(lay.file):
    try:
      if text is None:
        raise schema_lib.RowError("not UTF-8 text")
      r = lay.split(text)
      if len(r) != ncols:
        raise schema_lib.RowError(f"expected {ncols} fields, found {len(r)}")
      key = r[ki]
      if key == "":
        raise schema_lib.RowError(f"column {table.key!r}: missing key")
      k = canonical(key)
      if k in out:
        raise schema_lib.RowError(f"column {table.key!r}: key {key!r} repeats an "
                                  "earlier row")
      values = []
      for f, c, rx in zip(fields, cols, regexes):
        s = r[c]
        if rx is not None:
          hit = rx.search(s)
          s = hit.group(1) if hit and hit.group(1) is not None else ""
        try:
          values.append(schema_lib.parse_field(f, s))
        except ValueError as err:
          raise schema_lib.RowError(f"column {f.column!r}: {err}") from None
      out[k] = tuple(values)
    except ValueError as err:
      on_bad(path, line_no, str(err))
  return out
