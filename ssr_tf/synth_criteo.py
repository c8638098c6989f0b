"""Criteo-format click logs at any scale, with Zipf ids (`ssr_tf data synth_criteo`).

Writes the layout of Criteo's ``train.txt`` (TSV, no header)::

  label <TAB> I1 ... I13 <TAB> C1 ... C26        e.g. 0<TAB>3<TAB><TAB>17 ... <TAB>5a9ed9b0<TAB>...

* ``I1..I13``: integer counts, ``floor(lognormal)`` (``I2`` can be -1), each missing
  (empty) at the rate of the real column.
* ``C1..C26``: 8 lowercase hex characters (a 32-bit value) or empty. ``--large_fields``
  of them (C3, C4, C12, C16, C21, C24, C10, ... in that order, Criteo's largest fields)
  draw ranks from ``--id_space`` ids with a Zipf-Mandelbrot law
  ``p(k) ~ (k + offset)^-zipf`` (continuous inverse CDF, floored); the other fields draw
  plain Zipf ranks from a few hundred to a few thousand values. A rank becomes its value
  by ``(rank * 0x9E3779B1 + salt_field) mod 2^32``, a bijection, so distinct ranks are
  distinct strings.
* ``label``: Bernoulli of ``sigmoid(bias + sum_f w_f e(f, value_f) + numeric terms)``
  where ``e(f, v)`` is uniform on [-sqrt 3, sqrt 3] from a splitmix64 hash of (field,
  value): every id has its own fixed effect with no per-id memory, so a model that
  gives frequent ids their own embedding rows can learn what hashing ids into shared
  rows blurs. Missing values add nothing. CTR is about 0.25.

The effects and the rank -> value mapping do not depend on ``--seed`` (one fixed world):
files written with different seeds are independent samples of the same data, e.g. a
training file and a later test file.

Rows are made in chunks of 100,000 with numpy (random draws, digits and hex characters
written into a byte matrix whose padding is then dropped), and compressed by a writer
thread while the next chunk is built, so memory is a few hundred MB whatever ``--rows``
is; chunk i draws from ``default_rng([seed, i])``, so a seed fixes the bytes. Distinct ids
of the large fields are counted exactly with one byte per id of ``--id_space`` (skipped
when that would exceed 2 GiB). Prints one JSON line, with the AUC of the true logit on the
first 1M rows and the AUC without the large fields' per-id effects (what a model that
learns nothing per id of those fields can reach at best).

Defaults (4 large fields of 50M ids, zipf 1.05, offset 100,000): a 10M-row file holds
about 5.7M distinct ids in each large field; by the law, 42% of its rows fall on the 1M most
frequent ids of a field and 38% on ids expected at least twice.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np

from ssr_tf.errors import ConfigError, output_file

CHUNK = 100_000
NUM_INT, NUM_CAT = 13, 26
MAX_ID_SPACE = 1 << 32
# C fields (0-based) in the order they become large: Criteo's largest fields first.
LARGE_ORDER = (2, 3, 11, 15, 20, 23, 9, 6, 14, 25, 16, 18, 24, 0, 1, 4, 5, 7, 8, 10, 12,
               13, 17, 19, 21, 22)
# Values of the small fields (a few hundred to a few thousand).
SMALL_VOCAB = (1400, 550, 4000, 3000, 300, 240, 2500, 600, 200, 5000, 5000, 4500, 3000,
               260, 2800, 4000, 210, 5000, 2000, 400, 4800, 170, 150, 3500, 1000, 2400)
CAT_MISSING = (0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.03, 0.0, 0.03, 0.0, 0.0,
               0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.44)
LARGE_MISSING = 0.03
INT_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22)
INT_MU = tuple(1.5 + 0.3 * j for j in range(NUM_INT))   # lognormal mean of log(value)
INT_SIGMA = 1.4
INT_DIGITS = 10                                          # values are clipped below 1e10
# Logit: per-id effect weights (large, small fields), numeric slopes and the bias.
LARGE_WEIGHT, SMALL_WEIGHT = 0.5, 0.2
INT_SLOPES = {0: 0.25, 2: -0.2, 5: 0.15, 9: 0.2}
BIAS = -1.5
COUNT_LIMIT = 2 << 30            # bytes of distinct-id counters, at most
ORACLE_ROWS = 1_000_000          # rows whose oracle AUCs the summary reports
_M64 = np.uint64((1 << 64) - 1)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_TAB, _NL, _MINUS, _ZERO = 9, 10, 45, 48


@dataclasses.dataclass
class CriteoSynthConfig:
  """What to generate.

  Attributes:
    rows: data lines.
    seed: seed of the rows (the per-id effects do not depend on it).
    large_fields: how many of C1..C26 draw from `id_space` ids (0..26).
    id_space: ids per large field (at most 2^32: values are 8 hex characters).
    zipf: exponent of the rank law, large and small fields (> 0).
    zipf_offset: large fields: p(k) ~ (k + zipf_offset)^-zipf, a flatter head and more
      distinct ids than plain Zipf (0: plain Zipf).
    gzip_level: zlib level of a .gz output (1 fastest .. 9 smallest).
    count_distinct: count the distinct ids of each large field (one byte per id).
  """
  rows: int = 1_000_000
  seed: int = 0
  large_fields: int = 4
  id_space: int = 50_000_000
  zipf: float = 1.05
  zipf_offset: float = 100_000.0
  gzip_level: int = 1
  count_distinct: bool = True

  def validate(self) -> None:
    if self.rows < 1:
      raise ConfigError(f"--rows: must be >= 1, got {self.rows}")
    if not 0 <= self.large_fields <= NUM_CAT:
      raise ConfigError(f"--large_fields: must be 0..{NUM_CAT}, got {self.large_fields}")
    if not 1 <= self.id_space <= MAX_ID_SPACE:
      raise ConfigError(f"--id_space: must be 1..{MAX_ID_SPACE} (ids are 8 hex characters), "
                        f"got {self.id_space}")
    if not self.zipf > 0:
      raise ConfigError(f"--zipf: must be > 0, got {self.zipf}")
    if not self.zipf_offset >= 0:
      raise ConfigError(f"--zipf_offset: must be >= 0, got {self.zipf_offset}")
    if not 1 <= self.gzip_level <= 9:
      raise ConfigError(f"--gzip_level: must be 1..9, got {self.gzip_level}")

  @property
  def large(self) -> tuple[int, ...]:
    """0-based C fields that draw from the large id space."""
    return tuple(sorted(LARGE_ORDER[:self.large_fields]))


def zipf_ranks(rng: np.random.Generator, n: int, space: int, a: float,
               offset: float = 0.0) -> np.ndarray:
  """`n` ranks in [0, space) with P(rank k) ~ (k + 1 + offset)^-a: the inverse CDF of the
  continuous law on [1, space + 1), floored (int64)."""
  u = rng.random(n)
  q = float(offset)
  if abs(a - 1.0) < 1e-9:
    lo, hi = math.log1p(q), math.log(space + 1 + q)
    x = np.exp(lo + u * (hi - lo)) - q
  else:
    e = 1.0 - a
    lo, hi = (1.0 + q) ** e, (space + 1.0 + q) ** e
    x = (lo + u * (hi - lo)) ** (1.0 / e) - q
  return np.clip(np.floor(x).astype(np.int64) - 1, 0, space - 1)


def _salt(field: int) -> np.uint64:
  return np.uint64((field * 0x632BE59BD9B4E019 + 0x5851F42D) & 0xFFFFFFFF)


def id_values(ranks: np.ndarray, field: int) -> np.ndarray:
  """The 32-bit value (a bijection of the rank) written for field `field` (0-based)."""
  r = ranks.astype(np.uint64)
  return (r * np.uint64(0x9E3779B1) + _salt(field)) & np.uint64(0xFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser of uint64 `x` (wrapping arithmetic)."""
  with np.errstate(over="ignore"):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def id_effect(values: np.ndarray, field: int) -> np.ndarray:
  """The fixed logit effect of each value of field `field`: uniform on [-sqrt 3, sqrt 3]
  (unit variance) from a hash of (field, value)."""
  h = splitmix64(values.astype(np.uint64) | (np.uint64(field + 1) << np.uint64(32)))
  u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
  return math.sqrt(3.0) * (2.0 * u - 1.0)


def _put_int(mat: np.ndarray, col: int, v: np.ndarray, missing: np.ndarray) -> None:
  """A tab, then the decimal digits of v (sign first) into mat[:, col:col + 12]; unused
  positions stay 0 (dropped)."""
  mat[:, col] = _TAB
  mat[:, col + 1] = np.where((v < 0) & ~missing, _MINUS, 0)
  a = np.abs(v)
  for p in range(INT_DIGITS):
    div = 10 ** (INT_DIGITS - 1 - p)
    shown = ((a >= div) | (p == INT_DIGITS - 1)) & ~missing
    mat[:, col + 2 + p] = np.where(shown, _ZERO + (a // div) % 10, 0)


def _put_hex(mat: np.ndarray, col: int, v: np.ndarray, missing: np.ndarray) -> None:
  """A tab, then 8 hex characters of v (or nothing when missing)."""
  mat[:, col] = _TAB
  for j in range(8):
    nib = ((v >> np.uint64(28 - 4 * j)) & np.uint64(15)).astype(np.intp)
    mat[:, col + 1 + j] = np.where(missing, 0, _HEX[nib])


WIDTH = 1 + NUM_INT * (2 + INT_DIGITS) + NUM_CAT * 9 + 1


@dataclasses.dataclass
class Chunk:
  """One chunk of rows.

  Attributes:
    text: the TSV lines.
    label: 0/1 per row.
    logit: the true click logit per row.
    large_logit: the part of `logit` from the large fields' per-id effects.
    drawn: per large field, the ranks of its present values.
  """
  text: bytes
  label: np.ndarray
  logit: np.ndarray
  large_logit: np.ndarray
  drawn: list


def make_chunk(cfg: CriteoSynthConfig, index: int, n: int) -> Chunk:
  """Chunk `index` (n rows): rows drawn from ``default_rng([seed, index])``."""
  rng = np.random.default_rng([cfg.seed, index])
  large = set(cfg.large)
  mat = np.zeros((n, WIDTH), dtype=np.uint8)
  logit = np.full(n, BIAS)
  large_logit = np.zeros(n)
  col = 1
  for j in range(NUM_INT):
    v = np.floor(rng.lognormal(INT_MU[j], INT_SIGMA, n))
    v = np.minimum(v, 10.0 ** INT_DIGITS - 1).astype(np.int64) - (1 if j == 1 else 0)
    missing = rng.random(n) < INT_MISSING[j]
    if j in INT_SLOPES:
      t = (np.log1p(np.maximum(v, 0)) - INT_MU[j]) / INT_SIGMA
      logit += np.where(missing, 0.0, INT_SLOPES[j] * t)
    _put_int(mat, col, v, missing)
    col += 2 + INT_DIGITS
  drawn = []
  for f in range(NUM_CAT):
    if f in large:
      ranks = zipf_ranks(rng, n, cfg.id_space, cfg.zipf, cfg.zipf_offset)
      missing = rng.random(n) < LARGE_MISSING
      drawn.append(ranks[~missing])
      w = LARGE_WEIGHT
    else:
      ranks = zipf_ranks(rng, n, SMALL_VOCAB[f], cfg.zipf)
      missing = rng.random(n) < CAT_MISSING[f]
      w = SMALL_WEIGHT
    v = id_values(ranks, f)
    effect = np.where(missing, 0.0, w * id_effect(v, f))
    logit += effect
    if f in large:
      large_logit += effect
    _put_hex(mat, col, v, missing)
    col += 9
  label = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
  mat[:, 0] = np.where(label, ord("1"), ord("0"))
  mat[:, col] = _NL
  flat = mat.ravel()
  return Chunk(flat[flat != 0].tobytes(), label, logit, large_logit, drawn)


def _open(path: str, level: int):
  if path.endswith(".gz"):
    raw = open(path, "wb")                       # pylint: disable=consider-using-with
    # No file name and mtime 0 in the header: the same seed gives the same bytes.
    return gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw,
                         mtime=0), raw
  fh = open(path, "wb")                          # pylint: disable=consider-using-with
  return fh, None


def write(cfg: CriteoSynthConfig, output: str, progress_every: float = 0.0) -> dict:
  """Writes cfg.rows lines to `output` (.gz: gzip); returns the summary."""
  cfg.validate()
  start = time.perf_counter()
  large = cfg.large
  count = cfg.count_distinct and len(large) * cfg.id_space <= COUNT_LIMIT
  seen = [np.zeros(cfg.id_space, dtype=bool) for _ in large] if count else []
  positives, last = 0, start
  oracle: list[tuple] = []            # (label, logit, large_logit) of the first chunks
  out, raw = _open(output, cfg.gzip_level)
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
      pending: Optional[concurrent.futures.Future] = None
      for index, first in enumerate(range(0, cfg.rows, CHUNK)):
        chunk = make_chunk(cfg, index, min(CHUNK, cfg.rows - first))
        positives += int(chunk.label.sum())
        for s, ranks in zip(seen, chunk.drawn):
          s[ranks] = True
        if first < ORACLE_ROWS:
          oracle.append((chunk.label, chunk.logit, chunk.large_logit))
        if pending is not None:
          pending.result()          # at most one chunk in the writer (bounded memory)
        pending = pool.submit(out.write, chunk.text)
        now = time.perf_counter()
        if progress_every and now - last >= progress_every:
          last = now
          done = first + CHUNK
          print(f"synth_criteo: {min(done, cfg.rows):,} rows  "
                f"{done / (now - start):,.0f} rows/s", file=sys.stderr, flush=True)
      if pending is not None:
        pending.result()
  finally:
    out.close()
    if raw is not None:
      raw.close()
  seconds = time.perf_counter() - start
  names = [f"C{f + 1}" for f in large]
  distinct = ({n: int(np.count_nonzero(s)) for n, s in zip(names, seen)} if count else None)
  return {"output": output, "rows": cfg.rows, "bytes": os.path.getsize(output),
          "seconds": round(seconds, 2), "rows_per_s": round(cfg.rows / seconds, 1),
          "ctr": round(positives / cfg.rows, 4), "seed": cfg.seed,
          "large_fields": names, "id_space": cfg.id_space, "zipf": cfg.zipf,
          "zipf_offset": cfg.zipf_offset, "distinct_ids": distinct, **_oracle(oracle)}


def _oracle(parts: list[tuple]) -> dict:
  """AUC of the true logit, and of the logit without the large fields' per-id effects (the
  best a model can do that learns nothing per id of those fields), on the first rows."""
  from ssr_tf import metrics  # pylint: disable=import-outside-toplevel
  y, logit, large = (np.concatenate(x) for x in zip(*parts))
  return {"oracle_rows": int(y.size),
          "oracle_auc": round(metrics.auc(y, logit), 4),
          "oracle_auc_without_large_ids": round(metrics.auc(y, logit - large), 4)}


def main(argv: list[str], prog: str = "ssr_tf data synth_criteo") -> int:
  d = CriteoSynthConfig()
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--output", required=True, metavar="FILE[.gz]",
                 help="output file; a .gz name is gzip-compressed")
  p.add_argument("--rows", type=int, default=d.rows, help=f"data lines ({d.rows:,})")
  p.add_argument("--seed", type=int, default=d.seed, help="seed of the rows (0)")
  p.add_argument("--large_fields", type=int, default=d.large_fields,
                 help="C fields drawing from --id_space ids (4: C3, C4, C12, C16)")
  p.add_argument("--id_space", type=int, default=d.id_space,
                 help=f"ids per large field ({d.id_space:,}; at most 2^32)")
  p.add_argument("--zipf", type=float, default=d.zipf, help=f"rank exponent ({d.zipf})")
  p.add_argument("--zipf_offset", type=float, default=d.zipf_offset,
                 help="large fields: p(k) ~ (k + offset)^-zipf (100000; 0: plain Zipf)")
  p.add_argument("--gzip_level", type=int, default=d.gzip_level,
                 help="zlib level of a .gz output (1)")
  p.add_argument("--no_count", action="store_true",
                 help="skip counting the distinct ids of the large fields")
  p.add_argument("--progress_every", type=float, default=10.0,
                 help="seconds between progress lines on stderr (0: none)")
  args = p.parse_args(argv)
  cfg = CriteoSynthConfig(rows=args.rows, seed=args.seed, large_fields=args.large_fields,
                          id_space=args.id_space, zipf=args.zipf,
                          zipf_offset=args.zipf_offset, gzip_level=args.gzip_level,
                          count_distinct=not args.no_count)
  cfg.validate()
  output_file(args.output)
  print(json.dumps(write(cfg, args.output, args.progress_every)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
