"""Input files, the conversion plan, and the row loop both runners share.

Rows are numbered globally over the input files in the order given (train files, then
valid, then test files for pre-split inputs); blank lines are skipped and get no number,
bad rows keep theirs. Lines split on ``\\n`` only (a trailing ``\\r`` is dropped), so a
byte range of a file (a Beam chunk) yields exactly the lines the local reader sees.
Quoted fields may contain the delimiter but not a newline. A UTF-8 byte order mark at the
start of a file is skipped (it is not part of the first column's name or value). A ``.gz``
file that ends early or is corrupt stops the conversion with a DataError naming the file
and the last line read.

A path with a scheme (``gs://bucket/...``, ``ram://...``: any file system TensorFlow
knows) is read through ``tf.io.gfile``, so the Beam runner's driver and workers need no
local copy; plain paths are read with Python's own file objects.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import zlib
from typing import Any, Callable, Iterator, Optional

from ssr_tf.errors import ConfigError, DataError
from ssr_tf.features import DynamicIds, FeatureSpec
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines import transforms

BadRowFn = Callable[[int, int, str], None]   # (file index, line number, reason)


@dataclasses.dataclass
class InputFile:
  """One input file and its layout.

  Attributes:
    path: file path (``.gz`` files are read through gzip and never split into chunks).
    source: -1 when the split rule decides, else 0/1/2 for a train/valid/test input file.
    delimiter: field separator.
    names: column names.
    data_offset: byte offset of the first data line (after the header, or after a
      UTF-8 byte order mark that starts a file without header).
    first_line: 1-based line number at data_offset.
    size: file size in bytes.
  """
  path: str
  source: int
  delimiter: str
  names: list[str]
  data_offset: int
  first_line: int
  size: int

  @property
  def compressed(self) -> bool:
    return self.path.endswith(".gz")


@dataclasses.dataclass
class Options:
  """Conversion settings (the CLI flags).

  Attributes:
    min_count: values seen <= min_count times in the training split map to OOV.
    num_buckets: quantile buckets of a numeric feature (at most; ties merge buckets).
    max_len: values kept per multi-valued field (the first ones).
    shard_size: records per output shard.
    compression: "GZIP" or "" for the output shards.
    gzip_level: zlib level of GZIP shards (1 fastest .. 9 smallest).
    skip_bad_rows: bad rows to skip (and report) before failing.
    batch_size: data.batch_size of the written config.yaml.
    epochs: train.epochs of the written config.yaml.
  """
  min_count: int = 5
  num_buckets: int = 64
  max_len: int = 50
  shard_size: int = 200_000
  compression: str = "GZIP"
  gzip_level: int = 6
  skip_bad_rows: int = 0
  batch_size: int = 1024
  epochs: int = 1


@dataclasses.dataclass
class Plan:
  """Everything a runner needs: format, files, schema, split rule and options.

  `dynamic` (--ids dynamic): every single-valued categorical becomes a dynamic-ids
  feature and every multi-valued one gets hash_buckets = capacity; their values are not
  counted.
  """
  fmt: str
  mapping: schema_lib.Mapping
  files: list[InputFile]
  schema: schema_lib.Schema
  split: transforms.SplitRule
  options: Options
  base_spec: Optional[FeatureSpec] = None    # --spec: vocabularies and boundaries to reuse
  base_spec_path: str = ""
  dynamic: Optional[DynamicIds] = None       # --ids dynamic

  def uncounted(self) -> frozenset:
    """Schema indices of the categorical fields whose values are not counted (no
    vocabulary): all of them with --ids dynamic, the dynamic features of a --spec."""
    fields = self.schema.fields
    if self.dynamic is not None:
      return frozenset(i for i, f in enumerate(fields)
                       if f.kind in ("categorical", "multi_categorical"))
    if self.base_spec is not None:
      names = {f.name for f in self.base_spec.features if f.dynamic is not None}
      return frozenset(i for i, f in enumerate(fields) if f.name in names)
    return frozenset()

  def parser(self, file_index: int) -> schema_lib.RowParser:
    f = self.files[file_index]
    sch = schema_lib.resolve(self.mapping, f.names, self.options.max_len, f.path)
    return schema_lib.RowParser(sch, f.names, f.delimiter, self.mapping.strip)


BOM = b"\xef\xbb\xbf"      # UTF-8 byte order mark (Excel and some exporters write it)
READ_ERRORS = (EOFError, OSError, zlib.error)   # gzip.BadGzipFile is an OSError


def is_url(path: str) -> bool:
  """Whether `path` names its file system by a scheme (gs://, ram://, ...)."""
  return "://" in path


class _GFileRaw(io.RawIOBase):
  """A tf.io.gfile file as a raw binary stream (buffered by io.BufferedReader); its
  TensorFlow errors are raised as OSError, like a local file's."""

  def __init__(self, path: str):
    super().__init__()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self.name = path
    self._errors = tf.errors.OpError
    self._fh = tf.io.gfile.GFile(path, "rb")

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    try:
      data = self._fh.read(len(b))
    except self._errors as e:
      raise OSError(e.message) from None
    b[:len(data)] = data
    return len(data)

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    try:
      self._fh.seek(offset, whence)
      return self._fh.tell()
    except self._errors as e:
      raise OSError(e.message) from None

  def tell(self) -> int:
    return self._fh.tell()

  def close(self) -> None:
    if not self.closed:
      self._fh.close()
    super().close()


class _GzipReader(gzip.GzipFile):
  """gzip.GzipFile over a file object it closes with itself."""

  def __init__(self, fh):
    super().__init__(fileobj=fh, mode="rb")
    self._owned = fh

  def close(self) -> None:
    try:
      super().close()
    finally:
      self._owned.close()


def open_raw(path: str):
  """The file's bytes as stored (no decompression), seekable."""
  if is_url(path):
    return io.BufferedReader(_GFileRaw(path), buffer_size=1 << 20)
  return open(path, "rb")


def open_binary(path: str):
  if not is_url(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
  fh = open_raw(path)
  return _GzipReader(fh) if path.endswith(".gz") else fh


def _url_size(path: str) -> Optional[int]:
  """Size of the file at URL `path`, None when there is no such file."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
      return None
    return tf.io.gfile.stat(path).length
  except tf.errors.OpError as e:
    raise DataError(f"{path}: cannot read the input file ({e.message})") from None


def read_error(path: str, last_line: int, rows: int, err: BaseException) -> DataError:
  """The DataError of a file that could not be read to its end (a truncated or corrupt
  .gz, an I/O error), naming how far the read got."""
  what = ("truncated or corrupt gzip data" if path.endswith(".gz") else "read error")
  where = (f"after line {last_line} ({rows:,} rows read from this file)" if last_line
           else "before the first line")
  return DataError(f"{path}: {what} {where}: {err or type(err).__name__}")


def _first_line(path: str) -> tuple[Optional[str], int, int]:
  """The first line of a file (None when blank), the byte offset after it, and the
  length of the UTF-8 byte order mark it starts with (0 or 3)."""
  try:
    with open_binary(path) as fh:
      raw = fh.readline()
  except READ_ERRORS as e:
    raise read_error(path, 0, 0, e) from None
  bom = len(BOM) if raw.startswith(BOM) else 0
  if not raw[bom:].strip():
    return None, 0, bom
  try:
    text = raw[bom:].decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError:
    raise DataError(f"{path}:1: not UTF-8 text") from None
  return text, len(raw), bom


def describe_file(m: schema_lib.Mapping, path: str, source: int) -> InputFile:
  if is_url(path):
    size = _url_size(path)
  else:
    size = os.path.getsize(path) if os.path.isfile(path) else None
  if size is None:
    raise DataError(f"{path}: input file not found")
  first, after, bom = _first_line(path)
  if first is None:
    raise DataError(f"{path}: empty file (or empty first line)")
  delim, header, names = schema_lib.detect_layout(m, first, path)
  return InputFile(path, source, delim, names, after if header else bom, 2 if header else 1,
                   size)


def make_plan(fmt: str, mapping: schema_lib.Mapping, inputs: list[str],
              presplit: Optional[list[list[str]]], split: transforms.SplitRule,
              options: Options) -> Plan:
  """Reads every file's header, resolves the schema and checks all files agree."""
  files: list[InputFile] = []
  if presplit is not None:
    for s, paths in enumerate(presplit):
      files += [describe_file(mapping, p, s) for p in paths]
  else:
    files = [describe_file(mapping, p, -1) for p in inputs]
  if not files:
    raise ConfigError("no input files: give --input or --train_input/--test_input")
  schemas = [schema_lib.resolve(mapping, f.names, options.max_len, f.path) for f in files]
  for f, s in zip(files[1:], schemas[1:]):
    if s.signature() != schemas[0].signature():
      raise DataError(f"{f.path}: its columns give different features than "
                      f"{files[0].path} ({[x[0] for x in s.signature()]} vs "
                      f"{[x[0] for x in schemas[0].signature()]})")
  if split.kind == "time" and not mapping.time_column:
    raise ConfigError(f"--split time: format {fmt} has no time column (set time_column "
                      "in the mapping)")
  return Plan(fmt, mapping, files, schemas[0], split, options)


def iter_lines(fh, start: int, end: Optional[int], first_line: int
               ) -> Iterator[tuple[int, Optional[str], int]]:
  """(line number, text or None if not UTF-8, bytes consumed) of the non-blank lines in
  [start, end) of binary file `fh` (already positioned at start)."""
  pos, line_no = start, first_line
  for raw in fh:
    pos += len(raw)
    if raw.strip():
      try:
        text = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError:
        text = None
      yield line_no, text, pos
    line_no += 1
    if end is not None and pos >= end:
      return


def process(plan: Plan, file_index: int, lines, first_row: int, acc: transforms.Accumulator,
            encoder: transforms.ExampleEncoder, emit: Callable[[int, bytes], None],
            on_bad: BadRowFn, parser: Optional[schema_lib.RowParser] = None) -> int:
  """Parses, splits, counts and encodes the rows of `lines` (from iter_lines); returns the
  next global row index. Bad rows go to `on_bad` and keep their row index."""
  f = plan.files[file_index]
  parser = parser or plan.parser(file_index)
  split = plan.split
  source = f.source
  timed = split.kind == "time"
  ti = parser.time_index
  row = first_row
  for line_no, text, _ in lines:
    try:
      if text is None:
        raise schema_lib.RowError("not UTF-8 text")
      r = parser.split(text)
      values = parser.parse_fields(r)
      s = split.assign(row, source, schema_lib.time_key(r[ti]) if timed else None)
    except ValueError as e:         # RowError is a ValueError
      on_bad(file_index, line_no, str(e))
      acc.bad += 1
      row += 1
      continue
    acc.add(s, values)
    emit(s, encoder.encode(values))
    row += 1
  acc.flush()
  return row


def bad_row_message(path: str, line: int, why: str, budget: int) -> str:
  if budget:
    return (f"{path}:{line}: {why} (more than --skip_bad_rows {budget} bad rows)")
  return f"{path}:{line}: {why} (pass --skip_bad_rows N to skip up to N bad rows)"


def time_histogram(plan: Plan, file_index: int, lines) -> dict[Any, int]:
  """Counts of the time column's values in `lines` (the --split time pre-pass)."""
  parser = plan.parser(file_index)
  hist: dict[Any, int] = {}
  for _, text, _ in lines:
    if text is None:
      continue
    r = parser.split(text)
    if len(r) != parser.ncols or r[parser.time_index] == "":
      continue
    k = schema_lib.time_key(r[parser.time_index])
    hist[k] = hist.get(k, 0) + 1
  return hist


def chunks(plan: Plan, chunk_bytes: int) -> list[tuple[int, int, int, int]]:
  """(chunk id, file index, start, end) byte ranges aligned to line starts; gzip files
  are one chunk each."""
  out = []
  for fi, f in enumerate(plan.files):
    if f.compressed:
      out.append((len(out), fi, f.data_offset, -1))
      continue
    starts = [f.data_offset]
    with open_raw(f.path) as fh:
      b = f.data_offset + chunk_bytes
      while b < f.size:
        fh.seek(b - 1)
        fh.readline()               # to the start of the next line
        pos = fh.tell()
        if pos >= f.size:
          break
        if pos > starts[-1]:
          starts.append(pos)
        b = pos + chunk_bytes
    ends = starts[1:] + [f.size]
    for s, e in zip(starts, ends):
      out.append((len(out), fi, s, e))
  return out


def read_chunk(plan: Plan, file_index: int, start: int, end: int, first_line: int):
  """iter_lines over one chunk (end -1: to the end of a gzip file). A file that cannot be
  read to its end (a truncated .gz) raises a DataError naming the last line read."""
  f = plan.files[file_index]
  last, rows = first_line - 1, 0
  try:
    fh = open_binary(f.path)
  except OSError as e:
    raise read_error(f.path, 0, 0, e) from None
  try:
    fh.seek(start)                  # gzip: decompresses up to the header's end
    for item in iter_lines(fh, start, None if end < 0 else end, first_line):
      last, rows = item[0], rows + 1
      yield item
  except READ_ERRORS as e:
    raise read_error(f.path, last, rows, e) from None
  finally:
    fh.close()
