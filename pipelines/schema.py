"""Input formats: which column becomes which feature, label or group id, and the row parser.

Every format, built-in or user-given, is a :class:`Mapping` (the YAML of ``--format csv
--mapping MAP.yaml``); the built-in ones are in :data:`BUILTIN`. A mapping is resolved
against a file's header (or its ``columns`` list) into a :class:`Schema` of output fields,
and compiled into a :class:`RowParser` that turns one text line into a tuple of values::

  categorical int64   "17" -> 17        "" -> -1 (missing; -1 is reserved for missing)
  categorical string  "ab" -> "ab"      "" -> ""  (missing)
  numeric             "3"  -> 3.0       "" -> nan (missing)
  multi_categorical   "1^2^3" -> [1, 2, 3] (first max_len values)   "" -> []
  label               "0" / "1" -> 0.0 / 1.0 (anything else is a bad row)
  datetime            "14102100" -> hour_of_day 0, weekday 1 (two int64 categoricals)
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import fnmatch
import math
from typing import Any, Callable, Optional

from ssr_tf.config import from_dict
from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import check_labels

FORMATS = ("criteo", "avazu", "taobao", "csv")
MAPPING_TYPES = ("categorical", "numeric", "multi_categorical", "datetime")
DT_FORMATS = ("auto", "yymmddhh", "iso", "unix")
NAN = float("nan")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class RowError(ValueError):
  """One input row is bad; the caller adds file and line and applies --skip_bad_rows."""


@dataclasses.dataclass
class ColumnMapping:
  """One feature from one input column (or, with ``match``, one per matching column).

  Attributes:
    column: input column name.
    match: glob over column names (instead of ``column``); one feature per match.
    name: feature name (default: the column name). For ``datetime``, the prefix of the
      derived ``hour_of_day`` / ``weekday`` features (default: none).
    type: categorical | numeric | multi_categorical | datetime.
    dtype: int64 | string (categorical kinds). int64 needs integral values.
    sep: multi_categorical: separator of the values inside the field.
    max_len: multi_categorical: values kept per row, the first ones (default --max_len).
    combiner: multi_categorical pooling in the model: mean | sum.
    min_count: overrides --min_count for this feature.
    num_buckets: numeric: overrides --num_buckets for this feature.
    format: datetime: auto | yymmddhh (Avazu) | iso (YYYY-MM-DD HH:MM:SS) | unix (seconds).
  """
  column: str = ""
  match: str = ""
  name: str = ""
  type: str = "categorical"
  dtype: str = "string"
  sep: str = "|"
  max_len: Optional[int] = None
  combiner: str = "mean"
  min_count: Optional[int] = None
  num_buckets: Optional[int] = None
  format: str = "auto"


@dataclasses.dataclass
class Mapping:
  """How a delimited text file maps to features, labels and a group id.

  Attributes:
    delimiter: field separator; "auto" picks tab when the first line has one, else comma.
    header: true (first line of every file names the columns), false (use ``columns``)
      or "auto" (a header iff the first field of the first line is not a number).
    columns: column names when there is no header.
    strip: strip spaces around every field.
    features: the feature columns, in output order; other columns are dropped.
    labels: task -> label column, e.g. {click: click, pay: conversion}; click is required.
    group_id: column of the GAUC group (e.g. user or search id); optional.
    group_id_dtype: int64 | string, when group_id is not also a feature.
    time_column: column ordered in time for ``--split time`` (numbers or ISO strings).
  """
  delimiter: str = ","
  header: Any = True
  columns: list[str] = dataclasses.field(default_factory=list)
  strip: bool = False
  features: list[ColumnMapping] = dataclasses.field(default_factory=list)
  labels: dict[str, str] = dataclasses.field(default_factory=dict)
  group_id: str = ""
  group_id_dtype: str = "int64"
  time_column: str = ""


_CRITEO_COLUMNS = (["label"] + [f"I{i}" for i in range(1, 14)]
                   + [f"C{i}" for i in range(1, 27)])

BUILTIN: dict[str, dict] = {
    # Criteo display ads: label, I1..I13 integer counts, C1..C26 hashed categoricals.
    # train.txt as released is TSV without header; the CSV-with-header variant also works.
    "criteo": {
        "delimiter": "auto", "header": "auto", "columns": _CRITEO_COLUMNS,
        "features": [{"match": "I*", "type": "numeric"},
                     {"match": "C*", "type": "categorical", "dtype": "string"}],
        "labels": {"click": "label"},
    },
    # Avazu mobile ads (CSV with header); `hour` (YYMMDDHH) -> hour_of_day and weekday.
    "avazu": {
        "delimiter": ",", "header": True,
        "features": [{"column": "hour", "type": "datetime", "format": "yymmddhh"}]
        + [{"column": c, "dtype": "int64"} for c in ("C1", "banner_pos")]
        + [{"column": c, "dtype": "string"} for c in (
            "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
            "device_id", "device_ip", "device_model")]
        + [{"column": c, "dtype": "int64"} for c in (
            "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19",
            "C20", "C21")],
        "labels": {"click": "click"}, "time_column": "hour",
    },
    # Taobao display-ad clicks joined with user/ad profiles and the behaviour sequence
    # (the layout of FuxiCTR's taobao CSVs); GAUC groups by user.
    "taobao": {
        "delimiter": ",", "header": True,
        "features": [{"column": "time_stamp", "type": "datetime", "format": "auto"}]
        + [{"column": c, "dtype": "int64"} for c in ("userid", "adgroup_id")]
        + [{"column": "pid", "dtype": "string"}]
        + [{"column": c, "dtype": "int64"} for c in ("cate_id", "campaign_id", "customer",
                                                     "brand")]
        + [{"column": "price", "type": "numeric"}]
        + [{"column": c, "dtype": "int64"} for c in (
            "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
            "shopping_level", "occupation", "new_user_class_level")]
        + [{"column": "click_sequence", "type": "multi_categorical", "dtype": "int64",
            "sep": "^"}],
        "labels": {"click": "clk"}, "group_id": "userid", "time_column": "time_stamp",
    },
}


def load_mapping(fmt: str, mapping: Optional[dict] = None, where: str = "") -> Mapping:
  """The Mapping of a built-in format, or of `mapping` (parsed YAML) for format csv."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
  if fmt == "csv":
    if mapping is None:
      raise ConfigError("--format csv needs --mapping MAP.yaml (columns -> features, labels)")
    raw, where = mapping, where or "mapping"
  else:
    if mapping is not None:
      raise ConfigError(f"--mapping is only for --format csv (format {fmt} is built in)")
    raw, where = BUILTIN[fmt], f"format {fmt}"
  m = from_dict(Mapping, raw, path="")
  _validate_mapping(m, where)
  return m


def _validate_mapping(m: Mapping, where: str) -> None:
  if m.header not in (True, False, "auto"):
    raise ConfigError(f"{where}: header: must be true, false or auto, got {m.header!r}")
  if m.header is False and not m.columns:
    raise ConfigError(f"{where}: header: false needs 'columns' (the column names)")
  if not m.delimiter:
    raise ConfigError(f"{where}: delimiter: must not be empty")
  if not m.features:
    raise ConfigError(f"{where}: features: is empty")
  check_labels(where, m.labels)
  if m.group_id_dtype not in ("int64", "string"):
    raise ConfigError(f"{where}: group_id_dtype: must be int64 or string")
  for i, c in enumerate(m.features):
    path = f"{where}: features[{i}]"
    if bool(c.column) == bool(c.match):
      raise ConfigError(f"{path}: give exactly one of column, match")
    if c.type not in MAPPING_TYPES:
      raise ConfigError(f"{path}.type: {c.type!r} is not one of {MAPPING_TYPES}")
    if c.dtype not in ("int64", "string"):
      raise ConfigError(f"{path}.dtype: must be int64 or string, got {c.dtype!r}")
    if c.type == "datetime" and c.format not in DT_FORMATS:
      raise ConfigError(f"{path}.format: {c.format!r} is not one of {DT_FORMATS}")
    if c.combiner not in ("mean", "sum"):
      raise ConfigError(f"{path}.combiner: must be mean or sum")
    for key in ("max_len", "num_buckets"):
      v = getattr(c, key)
      if v is not None and v <= 0:
        raise ConfigError(f"{path}.{key}: must be > 0")
    if c.min_count is not None and c.min_count < 0:
      raise ConfigError(f"{path}.min_count: must be >= 0")
    if c.match and c.name:
      raise ConfigError(f"{path}: name cannot be used with match (features take the "
                        "column names)")


@dataclasses.dataclass(frozen=True)
class OutField:
  """One value of a parsed row (a record key)."""
  name: str
  kind: str          # categorical | numeric | multi_categorical | label | group
  dtype: str         # int64 | string | float32
  column: str        # source column
  sep: str = ""
  max_len: int = 0
  derive: str = ""   # datetime part: hour_of_day | weekday
  dt_format: str = ""
  combiner: str = "mean"
  min_count: Optional[int] = None
  num_buckets: Optional[int] = None


@dataclasses.dataclass
class Schema:
  """Output fields of a format resolved against column names: features, then labels,
  then the group id when it is not a feature."""
  fields: list[OutField]
  labels: dict[str, str]        # task -> record key
  group_id: str                 # record key or ""
  time_column: str

  @property
  def features(self) -> list[OutField]:
    return [f for f in self.fields if f.kind in ("categorical", "numeric", "multi_categorical")]

  def signature(self) -> list[tuple]:
    return [(f.name, f.kind, f.dtype) for f in self.fields]


def resolve(m: Mapping, names: list[str], max_len: int, where: str) -> Schema:
  """Output fields of mapping `m` for a file whose columns are `names`."""
  fields: list[OutField] = []
  seen: set[str] = set()

  def need(col: str, what: str) -> None:
    if col not in names:
      close = [n for n in names if n.lower() == col.lower()]
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise DataError(f"{where}: no column {col!r} ({what}){hint}; columns: {names[:50]}")

  def add(f: OutField) -> None:
    if f.name in seen:
      raise ConfigError(f"{where}: two outputs are named {f.name!r}")
    seen.add(f.name)
    fields.append(f)

  for i, c in enumerate(m.features):
    cols = [n for n in names if fnmatch.fnmatchcase(n, c.match)] if c.match else [c.column]
    if c.match and not cols:
      raise DataError(f"{where}: features[{i}].match {c.match!r} matches no column of "
                      f"{names[:50]}")
    for col in cols:
      need(col, f"features[{i}]")
      if c.type == "datetime":
        prefix = f"{c.name}_" if c.name else ""
        for part in ("hour_of_day", "weekday"):
          add(OutField(prefix + part, "categorical", "int64", col, derive=part,
                       dt_format=c.format, min_count=c.min_count))
        continue
      name = c.name or col
      if c.type == "numeric":
        add(OutField(name, "numeric", "float32", col, num_buckets=c.num_buckets))
      elif c.type == "multi_categorical":
        add(OutField(name, "multi_categorical", c.dtype, col, sep=c.sep,
                     max_len=c.max_len or max_len, combiner=c.combiner,
                     min_count=c.min_count))
      else:
        add(OutField(name, "categorical", c.dtype, col, min_count=c.min_count))
  labels = {}
  for task, col in m.labels.items():
    need(col, f"labels.{task}")
    if col in seen:
      raise ConfigError(f"{where}: label column {col!r} is also a feature")
    if col not in labels.values():
      add(OutField(col, "label", "float32", col))
    labels[task] = col
  group = ""
  if m.group_id:
    need(m.group_id, "group_id")
    by_name = {f.name: f for f in fields}
    if m.group_id in by_name and by_name[m.group_id].kind != "categorical":
      raise ConfigError(f"{where}: group_id {m.group_id!r} must be a categorical feature or "
                        "a column that is not a feature")
    if m.group_id not in by_name:
      add(OutField(m.group_id, "group", m.group_id_dtype, m.group_id))
    group = m.group_id
  if m.time_column:
    need(m.time_column, "time_column")
  return Schema(fields, labels, group, m.time_column)


# ---------------------------------------------------------------------------------------
# Parsing one field (slow path with messages; the compiled fast path mirrors it).


def parse_int(s: str) -> int:
  try:
    v = int(s)
  except ValueError:
    x = float(s)        # "3.0" is accepted; ValueError otherwise
    if not x.is_integer():
      raise ValueError(f"{s!r} is not an integer") from None
    v = int(x)
  if not INT64_MIN <= v <= INT64_MAX:
    raise ValueError(f"{s!r} does not fit in int64")
  return v


def parse_label(s: str) -> float:
  if s == "":
    raise ValueError("missing label")
  try:
    v = float(s)
  except ValueError:
    raise ValueError(f"label {s!r} is not 0 or 1") from None
  if v not in (0.0, 1.0):
    raise ValueError(f"label {s!r} is not 0 or 1")
  return v


def parse_float(s: str) -> float:
  if s == "":
    return NAN
  try:
    return float(s)
  except ValueError:
    raise ValueError(f"{s!r} is not a number") from None


def split_multi(s: str, sep: str, max_len: int, dtype: str) -> list:
  if s == "":
    return []
  parts = [p for p in s.split(sep) if p != ""][:max_len]
  return [parse_int(p) for p in parts] if dtype == "int64" else parts


def _dt_parts(s: str, fmt: str) -> tuple[int, int]:
  """(hour_of_day, weekday) of a timestamp string; (-1, -1) when missing."""
  if s == "":
    return -1, -1
  if fmt == "auto":
    fmt = "iso" if "-" in s else ("yymmddhh" if len(s) == 8 and s.isdigit() else "unix")
  try:
    if fmt == "yymmddhh":
      if len(s) != 8 or not s.isdigit():
        raise ValueError
      d = dt.date(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6]))
      hour = int(s[6:8])
      if hour > 23:
        raise ValueError
      return hour, d.weekday()
    if fmt == "iso":
      t = dt.datetime.fromisoformat(s)
      return t.hour, t.weekday()
    t = dt.datetime.fromtimestamp(float(s), tz=dt.timezone.utc)
    return t.hour, t.weekday()
  except (ValueError, OverflowError, OSError):
    raise ValueError(f"{s!r} is not a {fmt} timestamp") from None


_DT_CACHE: dict[tuple[str, str], tuple[int, int]] = {}


def dt_parts(s: str, fmt: str) -> tuple[int, int]:
  key = (s, fmt)
  hit = _DT_CACHE.get(key)
  if hit is None:
    if len(_DT_CACHE) > 200_000:
      _DT_CACHE.clear()
    hit = _DT_CACHE[key] = _dt_parts(s, fmt)
  return hit


def parse_field(f: OutField, s: str) -> Any:
  """The value of output field `f` from raw string `s` (ValueError with the reason)."""
  if f.kind == "label":
    return parse_label(s)
  if f.kind == "numeric":
    return parse_float(s)
  if f.kind == "multi_categorical":
    return split_multi(s, f.sep, f.max_len, f.dtype)
  if f.derive:
    return dt_parts(s, f.dt_format)[0 if f.derive == "hour_of_day" else 1]
  if f.dtype == "int64":
    return -1 if s == "" else parse_int(s)
  return s


def time_key(s: str) -> Any:
  """Orders --split time values: numbers numerically, anything else as strings."""
  try:
    v = float(s)
    return v if not math.isnan(v) else s
  except ValueError:
    return s


# ---------------------------------------------------------------------------------------
# Compiled row parser.


class RowParser:
  """Turns one line of a file into the tuple of its schema's field values.

  A generated function does the common case in one expression per field; when it fails,
  the field-by-field slow path names the column and the reason (RowError).
  """

  def __init__(self, schema: Schema, names: list[str], delimiter: str, strip: bool):
    self.schema = schema
    self.names = names
    self.ncols = len(names)
    self.delimiter = delimiter
    self.strip = strip
    index = {n: i for i, n in enumerate(names)}
    self.index = [index[f.column] for f in schema.fields]
    self.time_index = index[schema.time_column] if schema.time_column else -1
    self._int_fields = [(k, f.column) for k, f in enumerate(schema.fields)
                        if f.dtype == "int64" and f.kind in ("categorical", "group")
                        and not f.derive]
    self._fast = self._compile()

  def _compile(self) -> Callable[[list[str]], tuple]:
    env: dict[str, Any] = {"NAN": NAN, "float": float, "int": int, "_dt": dt_parts,
                           "_L": {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0},
                           "_multi": split_multi}
    exprs = []
    for f, i in zip(self.schema.fields, self.index):
      v = f"r[{i}]"
      if f.kind == "label":
        exprs.append(f"_L[{v}]")
      elif f.kind == "numeric":
        exprs.append(f"(float({v}) if {v} else NAN)")
      elif f.kind == "multi_categorical":
        exprs.append(f"_multi({v}, {f.sep!r}, {f.max_len}, {f.dtype!r})")
      elif f.derive:
        exprs.append(f"_dt({v}, {f.dt_format!r})[{0 if f.derive == 'hour_of_day' else 1}]")
      elif f.dtype == "int64":
        exprs.append(f"(int({v}) if {v} else -1)")
      else:
        exprs.append(v)
    src = "def parse(r):\n  return (" + ", ".join(exprs) + ",)\n"
    exec(compile(src, "<row parser>", "exec"), env)  # pylint: disable=exec-used
    return env["parse"]

  def split(self, line: str) -> list[str]:
    if '"' in line:
      r = next(csv.reader([line], delimiter=self.delimiter))
    else:
      r = line.split(self.delimiter)
    if self.strip:
      r = [x.strip() for x in r]
    return r

  def parse(self, line: str) -> tuple:
    """Values of one line (RowError on a bad row)."""
    return self.parse_fields(self.split(line))

  def parse_fields(self, r: list[str]) -> tuple:
    """Values of one line already split into fields (RowError on a bad row)."""
    if len(r) != self.ncols:
      raise RowError(f"expected {self.ncols} fields, found {len(r)}")
    try:
      values = self._fast(r)
    except (ValueError, KeyError, OverflowError):
      values = self._slow(r)
    for k, col in self._int_fields:
      if not INT64_MIN <= values[k] <= INT64_MAX:
        raise RowError(f"column {col!r}: {values[k]} does not fit in int64")
    return values

  def _slow(self, r: list[str]) -> tuple:
    out = []
    for f, i in zip(self.schema.fields, self.index):
      try:
        out.append(parse_field(f, r[i]))
      except ValueError as e:
        raise RowError(f"column {f.column!r}: {e}") from None
    return tuple(out)


def detect_layout(m: Mapping, first_line: str, where: str) -> tuple[str, bool, list[str]]:
  """(delimiter, has_header, column names) of a file from its first line."""
  delim = m.delimiter
  if delim == "auto":
    delim = "\t" if "\t" in first_line else ","
  elif delim == "\\t":
    delim = "\t"
  header = m.header
  if header == "auto":
    first = first_line.split(delim, 1)[0].strip().strip('"')
    try:
      float(first)
      header = False
    except ValueError:
      header = first != ""
  if header:
    names = next(csv.reader([first_line], delimiter=delim))
    names = [n.strip() for n in names]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
      raise DataError(f"{where}:1: duplicate column names in header: {sorted(dup)}")
  else:
    if not m.columns:
      raise DataError(f"{where}:1: the first line is not a header and the mapping has no "
                      "'columns' list")
    names = list(m.columns)
  return delim, bool(header), names
