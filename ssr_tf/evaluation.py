"""`ssr_tf evaluate`: exact AUC, GAUC, LogLoss, normalized entropy and calibration per task
(and the oracle's, when known)."""
from __future__ import annotations

import difflib
import json
import pathlib
from typing import Optional

import numpy as np

from ssr_tf import data as data_lib
from ssr_tf import metrics, task
from ssr_tf.config import TASKS, ExperimentConfig
from ssr_tf.errors import UserError


def predict_split(model, spec, cfg: ExperimentConfig, split: str = "test",
                  others: Optional[dict] = None, slice_by: Optional[str] = None) -> dict:
  """Model probabilities, labels, groups and oracle probabilities over a whole split.

  Each model in `others` ({name: model}) scores the same batches in the same pass; its
  probabilities come back as "name:click_prob" etc., row-aligned with the main model's.
  With `slice_by`, that feature's values come back as "slice".
  """
  pattern = getattr(cfg.data, split)
  ds = data_lib.make_dataset(pattern, spec, cfg.data.batch_size, training=False,
                             key=f"data.{split}", compression=cfg.data.compression,
                             with_extras=True)
  out: dict[str, list] = {}

  def run():
    for features, labels, extras in ds:
      probs = dict(model(features, training=False))
      for name, other in (others or {}).items():
        probs.update({f"{name}:{k}": v for k, v in other(features, training=False).items()})
      if slice_by:
        extras = {**extras, "slice": features[slice_by]}
      for k, v in {**probs, **{f"label_{t}": l for t, l in labels.items()}, **extras}.items():
        out.setdefault(k, []).append(v.numpy())
  task.data_errors(run)
  return {k: np.concatenate(v) for k, v in out.items()}


def _quality(y: np.ndarray, p: np.ndarray, groups: Optional[np.ndarray]) -> dict:
  """AUC, LogLoss, NE, calibration (and GAUC when groups are given) of probabilities p."""
  r = {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p),
       "ne": metrics.normalized_entropy(y, p), "calibration": metrics.calibration(y, p)}
  if groups is not None:
    r["gauc"] = metrics.gauc(y, p, groups)
  return r


def _with_oracle(y: np.ndarray, p: np.ndarray, oracle: Optional[np.ndarray],
                 groups: Optional[np.ndarray]) -> dict:
  """_quality of p, plus oracle_* entries for the true probabilities when all are known."""
  r = _quality(y, p, groups)
  if oracle is not None and (oracle >= 0).all():
    r.update({f"oracle_{k}": v for k, v in _quality(y, oracle, groups).items()})
  return r


def score(arrays: dict, has_group: bool) -> dict:
  """{task: {auc, gauc, logloss, ne, calibration, rows, positives, oracle_auc, ...}} from
  predict_split's arrays; the oracle_* entries score the true probabilities, when known."""
  groups = arrays["group"] if has_group else None
  result = {}
  for t in TASKS:
    if f"label_{t}" not in arrays:
      continue
    y = arrays[f"label_{t}"]
    result[t] = {**_with_oracle(y, arrays[f"{t}_prob"], arrays.get(f"oracle_{t}"), groups),
                 "positives": int(y.sum()), "rows": int(y.size)}
  return result


def json_safe(value):
  """NaN (e.g. GAUC with no group holding both classes) becomes null: valid JSON."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, list):
    return [json_safe(v) for v in value]
  if isinstance(value, float) and value != value:
    return None
  return value


def check_slice_feature(spec, name: str) -> None:
  """--slice_by must name a single-valued categorical feature of the spec."""
  by_name = {f.name: f for f in spec.features}
  f = by_name.get(name)
  if f is None:
    close = difflib.get_close_matches(name, list(by_name), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UserError(f"--slice_by {name}: not a feature of the spec{hint}")
  if f.type != "categorical":
    raise UserError(f"--slice_by {name}: a {f.type} feature; slice by a single-valued "
                    "categorical feature (bucketize a numeric one in the spec first)")


def score_slices(arrays: dict, max_slices: int) -> list[dict]:
  """Per value of arrays["slice"] (the `max_slices` most frequent; the rest pooled as
  "(other)"): rows and, per task, AUC, LogLoss, NE, calibration and positives (and the
  oracle's, when the data carry it)."""
  out = []
  for label, rows in slice_rows(arrays["slice"], max_slices):
    entry = {"value": label, "rows": int(rows.sum())}
    for t in TASKS:
      if f"label_{t}" in arrays:
        y, p = arrays[f"label_{t}"][rows], arrays[f"{t}_prob"][rows]
        oracle = arrays.get(f"oracle_{t}")
        entry[t] = {**_with_oracle(y, p, None if oracle is None else oracle[rows], None),
                    "positives": int(y.sum())}
    out.append(entry)
  return out


def slice_rows(values: np.ndarray, max_slices: int) -> list[tuple[str, np.ndarray]]:
  """(label, row mask) per value, the `max_slices` most frequent first (ties in value
  order), then the remaining values pooled as "(other)"."""
  unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  order = np.argsort(-counts, kind="stable")
  out = [(_display(unique[i]), inverse == i) for i in order[:max_slices]]
  if len(order) > max_slices:
    out.append(("(other)", np.isin(inverse, order[max_slices:])))
  return out


def _display(value) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def evaluate(cfg: ExperimentConfig, checkpoint: Optional[str] = None, split: str = "test",
             slice_by: Optional[str] = None, max_slices: int = 20) -> dict:
  """Scores `split` with the newest (or the given) checkpoint; writes model_dir/eval_<split>.json."""
  spec, model = task.build(cfg)
  if slice_by:
    check_slice_feature(spec, slice_by)
  path = task.restore(model, cfg.train.model_dir, checkpoint)
  arrays = predict_split(model, spec, cfg, split, slice_by=slice_by)
  result = {"checkpoint": path, "split": split,
            "tasks": score(arrays, has_group="group" in arrays)}
  if slice_by:
    result["slices"] = {"by": slice_by, "values": score_slices(arrays, max_slices)}
  result = json_safe(result)
  out = pathlib.Path(cfg.train.model_dir) / f"eval_{split}.json"
  out.write_text(json.dumps(result, indent=2, allow_nan=False))
  result["written"] = str(out)
  return result


TABLE_ROWS = ("auc", "gauc", "logloss", "ne", "calibration", "rows", "positives")


def format_table(result: dict) -> str:
  """One row per metric, one column per task (and per task's oracle, when known)."""
  columns = []                                  # (header, task, key prefix)
  for t, r in result["tasks"].items():
    columns.append((t, t, ""))
    if any(k.startswith("oracle_") for k in r):
      columns.append(("oracle", t, "oracle_"))
  names = [m for m in TABLE_ROWS if any(m in r for r in result["tasks"].values())]
  lines = [f"{'metric':<12}" + "".join(f"{h:>10}" for h, _, _ in columns)]
  for m in names:
    cells = []
    for _, t, prefix in columns:
      v = result["tasks"][t].get(prefix + m)
      if v is None:                             # oracle: no rows / positives of its own
        cells.append(f"{'' if prefix else '-':>10}")
      else:
        cells.append(f"{v:>10d}" if isinstance(v, int) else f"{v:>10.4f}")
    lines.append(f"{m:<12}" + "".join(cells).rstrip())
  return "\n".join(lines)


def format_slices(slices: dict) -> str:
  """One row per slice value: rows, then AUC / NE / calibration per task."""
  tasks = [t for t in TASKS if any(t in v for v in slices["values"])]
  head = f"{slices['by']:<16}{'rows':>9}" + "".join(
      f"{t + ' ' + m:>13}" for t in tasks for m in ("auc", "ne", "calib"))
  lines = [head]
  for v in slices["values"]:
    cells = []
    for t in tasks:
      for m in ("auc", "ne", "calibration"):
        x = v.get(t, {}).get(m)
        cells.append(f"{'-':>13}" if x is None else f"{x:>13.4f}")
    lines.append(f"{v['value'][:15]:<16}{v['rows']:>9d}" + "".join(cells))
  return "\n".join(lines)


def main(argv: list[str], prog: str = "ssr_tf evaluate") -> int:
  p = task.config_parser(prog, "Evaluate a trained model: AUC, GAUC, LogLoss, normalized "
                               "entropy (NE) and calibration per task.")
  p.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: newest)")
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  p.add_argument("--slice_by", default=None, metavar="FEATURE",
                 help="also score each value of this categorical feature separately")
  p.add_argument("--max_slices", type=int, default=20,
                 help="most frequent values scored alone; the rest pooled as (other)")
  args = p.parse_args(argv)
  if args.max_slices < 1:
    p.error("--max_slices must be >= 1")
  result = evaluate(task.config_from_args(args), args.checkpoint, args.split, args.slice_by,
                    args.max_slices)
  print(format_table(result))
  if "slices" in result:
    print(format_slices(result["slices"]))
  print(json.dumps(result))
  return 0
