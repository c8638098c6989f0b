"""`ssr_tf bench study`: one table across data sets from `ssr_tf bench quality` runs.

Reads ``<suite>.runs.jsonl`` from each ``--runs LABEL=DIR`` and writes, per setting, the
test AUC on every data set (mean ± sd over seeds) and its gap to each ``--against``
model, paired by seed: gap = mean_s (AUC_row,s - AUC_ref,s) with a 95% Student-t
interval over the seeds (the same seed shares data order and split, so pairing removes
their shared noise). Then the same-budget selection: for each ``--family NAME=T1,T2,..``
the trial with the best mean validation AUC is picked per data set and compared on test.

Example:
  ssr_tf bench study --suite probe --runs movielens=benchmarks/ssr_real/ml \
    --runs synthetic=benchmarks/ssr_real/synth --against dnn,dcnv2 \
    --family "ssr_d=ssr_d,ssr_d/lr3e-3,ssr_d/drop0.2" --output benchmarks/ssr_real
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np

from ssr_tf.errors import UserError

# Two-sided 95% Student-t quantiles by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228}


def t95(df: int) -> float:
  return _T95.get(df, 1.96 if df > 30 else 2.0)


def load_runs(path: pathlib.Path, suite: str) -> dict[str, dict[int, dict]]:
  """{setting: {seed: run}} from DIR/<suite>.runs.jsonl."""
  f = path / f"{suite}.runs.jsonl"
  if not f.is_file():
    raise UserError(f"--runs {path}: no {f.name} (run `ssr_tf bench quality --suite {suite} "
                    f"--output {path}` first)")
  out: dict[str, dict[int, dict]] = {}
  for line in f.read_text().splitlines():
    if line.strip():
      r = json.loads(line)
      out.setdefault(r["name"], {})[r["seed"]] = r
  return out


def test_auc(r: dict) -> float:
  return float(r["test"]["click_auc"])


def mean_sd(xs: list[float]) -> tuple[float, float]:
  a = np.asarray(xs, dtype=np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def paired_gap(row: dict[int, dict], ref: dict[int, dict]) -> tuple[float, float, int]:
  """(mean gap, 95% half-width, seeds) of AUC_row - AUC_ref over their shared seeds."""
  seeds = sorted(set(row) & set(ref))
  d = [test_auc(row[s]) - test_auc(ref[s]) for s in seeds]
  if not d:
    return math.nan, math.nan, 0
  m, sd = mean_sd(d)
  half = t95(len(d) - 1) * sd / math.sqrt(len(d)) if len(d) > 1 else math.nan
  return m, half, len(d)


def fmt_gap(g: tuple[float, float, int]) -> str:
  m, half, n = g
  if n == 0:
    return "-"
  return f"{m * 100:+.2f} [{(m - half) * 100:+.2f}, {(m + half) * 100:+.2f}]"


def best_trial(runs: dict[str, dict[int, dict]], trials: list[str]) -> str | None:
  """The trial with the best mean validation AUC (among those run)."""
  have = [t for t in trials if t in runs]
  if not have:
    return None
  return max(have, key=lambda t: np.mean([r["valid_click_auc"] for r in runs[t].values()]))


METRICS = {"auc": ("AUC", "click_auc"), "gauc": ("GAUC", "click_gauc"),
           "logloss": ("LogLoss", "click_logloss")}


def table(data: dict[str, dict], against: list[str], extra: tuple[str, ...] = ()) -> list[str]:
  """Rows: settings; columns: test AUC per data set (then `extra` metrics), gaps."""
  labels = list(data)
  names: list[str] = []
  for runs in data.values():
    names += [n for n in runs if n not in names]
  head = ["setting"] + [f"AUC {l}" for l in labels]
  head += [f"{METRICS[m][0]} {l}" for m in extra for l in labels]
  head += [f"ΔAUC vs {a} ({l}) ×10⁻² [95% CI]" for a in against for l in labels]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in names:
    cells = [name]
    for l in labels:
      rs = data[l].get(name)
      if rs:
        m, sd = mean_sd([test_auc(r) for r in rs.values()])
        cells.append(f"{m:.4f} ± {sd:.4f} (n={len(rs)})")
      else:
        cells.append("-")
    for m in extra:
      for l in labels:
        rs = data[l].get(name)
        vals = [r["test"].get(METRICS[m][1]) for r in rs.values()] if rs else []
        if vals and None not in vals:
          mean, sd = mean_sd(vals)
          cells.append(f"{mean:.4f} ± {sd:.4f}")
        else:
          cells.append("-")
    for a in against:
      for l in labels:
        rs, ref = data[l].get(name), data[l].get(a)
        cells.append(fmt_gap(paired_gap(rs, ref)) if rs and ref and name != a else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def selection(data: dict[str, dict], families: dict[str, list[str]]) -> list[str]:
  labels = list(data)
  lines = ["| family (trials) | " + " | ".join(f"picked on valid, test AUC ({l})" for l in labels)
           + " |", "|---|" + "---|" * len(labels)]
  for fam, trials in families.items():
    cells = [f"{fam} ({', '.join(trials)})"]
    for l in labels:
      best = best_trial(data[l], trials)
      if best is None:
        cells.append("-")
        continue
      m, sd = mean_sd([test_auc(r) for r in data[l][best].values()])
      cells.append(f"{best}: {m:.4f} ± {sd:.4f}")
    lines.append("| " + " | ".join(cells) + " |")
  if len(families) > 1:
    first = next(iter(families))
    lines += ["", f"Gap of the picked {first} trial to each other family's picked trial "
              "(paired by seed, ×10⁻², 95% CI):", ""]
    lines += ["| vs | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for fam, trials in list(families.items())[1:]:
      cells = [fam]
      for l in labels:
        a, b = best_trial(data[l], families[first]), best_trial(data[l], trials)
        cells.append(fmt_gap(paired_gap(data[l][a], data[l][b])) if a and b else "-")
      lines.append("| " + " | ".join(cells) + " |")
  return lines


def _pairs(items: list[str], flag: str) -> dict[str, str]:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
      raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
    out[key] = value
  return out


def main(argv: list[str], prog: str = "ssr_tf bench study") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--suite", required=True)
  p.add_argument("--runs", action="append", required=True, metavar="LABEL=DIR")
  p.add_argument("--against", default="dnn,dcnv2", help="reference settings for the gaps")
  p.add_argument("--family", action="append", default=[], metavar="NAME=T1,T2,...",
                 help="trials of one model family for the same-budget selection")
  p.add_argument("--metrics", default="", help="more test metrics per data set: gauc, "
                 "logloss (comma-separated)")
  p.add_argument("--output", default=None, help="folder for <suite>_study.md")
  args = p.parse_args(argv)
  data = {label: load_runs(pathlib.Path(d), args.suite)
          for label, d in _pairs(args.runs, "--runs").items()}
  against = [a for a in args.against.split(",") if a]
  families = {k: v.split(",") for k, v in _pairs(args.family, "--family").items()}
  extra = tuple(m for m in args.metrics.split(",") if m)
  unknown = [m for m in extra if m not in METRICS]
  if unknown:
    raise UserError(f"--metrics: {unknown} not in {sorted(METRICS)}")
  lines = [f"### `{args.suite}` across data sets", ""] + table(data, against, extra)
  if families:
    lines += ["", "Same trial budget per family, picked on validation AUC:", ""]
    lines += selection(data, families)
  md = "\n".join(lines) + "\n"
  print(md)
  if args.output:
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.suite}_study.md").write_text(md)
  return 0
