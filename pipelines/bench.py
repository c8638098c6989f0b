"""`ssr_tf bench convert`: converter throughput on generated Criteo-format data.

Generates a Criteo ``train.txt``-style TSV (label, 13 integer columns with missing
values, 26 hashed categoricals with Zipf-distributed values) in a temporary folder,
converts it with the local runner (and, when apache-beam is installed, a smaller one with
the Beam DirectRunner) and prints JSON: rows/s, seconds and TFRecord bytes per row.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

import numpy as np

from ssr_tf.pipelines import convert

_VOCAB = [1400, 550, 1_000_000, 200_000, 300, 24, 12_000, 600, 3, 90_000, 5_000,
          1_000_000, 3_000, 26, 10_000, 500_000, 10, 5_000, 2_000, 4, 800_000, 17, 15,
          100_000, 100, 50_000]
_CAT_MISSING = [0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.03, 0.0, 0.03, 0.0, 0.0,
                0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.44]
_NUM_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]


def generate_criteo(path: str, rows: int, seed: int = 0, block: int = 100_000) -> int:
  """Writes `rows` Criteo-format TSV lines to `path`; returns its size in bytes."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as fh:
    for start in range(0, rows, block):
      n = min(block, rows - start)
      cols = [np.where(rng.random(n) < 0.256, "1", "0").tolist()]
      for j in range(13):
        v = np.floor(rng.lognormal(1.5 + 0.3 * j, 1.4, n)).astype(np.int64)
        if j == 1:
          v = v - 1                      # I2 has -1 values, as in the real data
        s = v.astype(str)
        cols.append(np.where(rng.random(n) < _NUM_MISSING[j], "", s).tolist())
      for j in range(26):
        ids = np.minimum(rng.zipf(1.3, n), _VOCAB[j]).astype(np.uint64)
        h = (ids * np.uint64(2654435761) + np.uint64(j * 7919)) % np.uint64(1 << 32)
        s = np.char.zfill(np.char.mod("%x", h), 8)
        cols.append(np.where(rng.random(n) < _CAT_MISSING[j], "", s).tolist())
      fh.write("".join("\t".join(r) + "\n" for r in zip(*cols)))
  return os.path.getsize(path)


def _bytes(out: pathlib.Path) -> int:
  return sum(p.stat().st_size for s in ("train", "valid", "test")
             for p in (out / s).glob("part-*"))


def measure(runner: str, src: str, rows: int, out: pathlib.Path, compression: str,
            extra: list[str]) -> dict:
  """Times one conversion: wall seconds, rows/s and, since the machine may be shared,
  CPU seconds of this process (and its children) and rows per CPU second."""
  level = compression[4:] if compression.startswith("gzip") else ""
  comp = "gzip" if compression.startswith("gzip") else "none"
  flags = ["--compression", comp] + (["--gzip_level", level] if level else [])
  cpu0 = _cpu()
  start = time.perf_counter()
  summary = convert.convert(["--format", "criteo", "--input", src, "--output", str(out),
                             "--runner", runner, "--quiet", *flags, *extra])
  seconds = time.perf_counter() - start
  cpu = _cpu() - cpu0
  total = sum(summary["rows"].values())
  return {"runner": runner, "rows": rows,
          "compression": comp + (f" level {level or 6}" if comp == "gzip" else ""),
          "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1),
          "cpu_seconds": round(cpu, 2), "rows_per_cpu_s": round(rows / max(cpu, 1e-9), 1),
          "tfrecord_bytes_per_row": round(_bytes(out) / max(total, 1), 1)}


def _cpu() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str], prog: str = "ssr_tf bench convert") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=1_000_000, help="local runner input rows")
  p.add_argument("--beam_rows", type=int, default=50_000, help="DirectRunner input rows "
                 "(0: skip Beam)")
  p.add_argument("--compression", nargs="+", default=["gzip", "gzip1", "none"],
                 help="output compressions to time with the local runner: gzip (level 6), "
                 "gzipN (level N), none")
  p.add_argument("--workdir", default=None, help="folder for the generated data "
                 "(default: a temporary folder, removed afterwards)")
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  # (imported before timing: the conversions below should not pay TensorFlow's import)
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    t = pathlib.Path(tmp)
    src = str(t / "train.txt")
    start = time.perf_counter()
    size = generate_criteo(src, args.rows)
    result = {"input": {"format": "criteo TSV (generated)", "rows": args.rows,
                        "bytes": size, "generate_seconds":
                        round(time.perf_counter() - start, 1)},
              "local": [], "beam": None,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average_1m_at_start": round(os.getloadavg()[0], 1)}}
    for comp in args.compression:
      result["local"].append(measure("local", src, args.rows, t / f"local_{comp}",
                                     comp, []))
      print(json.dumps(result["local"][-1]), file=sys.stderr)
    if args.beam_rows:
      try:
        import apache_beam  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        small = str(t / "small.txt")
        generate_criteo(small, args.beam_rows, seed=1)
        local_small = measure("local", small, args.beam_rows, t / "small_local", "gzip", [])
        beam = measure("DirectRunner", small, args.beam_rows, t / "small_beam", "gzip",
                       ["--chunk_mb", "1"])
        beam["local_rows_per_s_same_input"] = local_small["rows_per_s"]
        result["beam"] = beam
      except ImportError:
        result["beam"] = {"skipped": "apache-beam not installed (see requirements-beam.txt)"}
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  return 0
