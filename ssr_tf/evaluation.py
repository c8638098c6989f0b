"""`ssr_tf evaluate`: exact AUC, GAUC, LogLoss, normalized entropy and calibration per task
(and the oracle's, when known)."""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import numpy as np

from ssr_tf import data as data_lib
from ssr_tf import metrics, task
from ssr_tf.config import TASKS, ExperimentConfig


def predict_split(model, spec, cfg: ExperimentConfig, split: str = "test",
                  others: Optional[dict] = None) -> dict:
  """Model probabilities, labels, groups and oracle probabilities over a whole split.

  Each model in `others` ({name: model}) scores the same batches in the same pass; its
  probabilities come back as "name:click_prob" etc., row-aligned with the main model's.
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


def score(arrays: dict, has_group: bool) -> dict:
  """{task: {auc, gauc, logloss, ne, calibration, rows, positives, oracle_auc, ...}} from
  predict_split's arrays; the oracle_* entries score the true probabilities, when known."""
  groups = arrays["group"] if has_group else None
  result = {}
  for t in TASKS:
    if f"label_{t}" not in arrays:
      continue
    y = arrays[f"label_{t}"]
    r = {**_quality(y, arrays[f"{t}_prob"], groups), "positives": int(y.sum()),
         "rows": int(y.size)}
    if f"oracle_{t}" in arrays and (arrays[f"oracle_{t}"] >= 0).all():
      r.update({f"oracle_{k}": v for k, v in _quality(y, arrays[f"oracle_{t}"], groups).items()})
    result[t] = r
  return result


def json_safe(value):
  """NaN (e.g. GAUC with no group holding both classes) becomes null: valid JSON."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, float) and value != value:
    return None
  return value


def evaluate(cfg: ExperimentConfig, checkpoint: Optional[str] = None, split: str = "test") -> dict:
  spec, model = task.build(cfg)
  path = task.restore(model, cfg.train.model_dir, checkpoint)
  arrays = predict_split(model, spec, cfg, split)
  result = json_safe({"checkpoint": path, "split": split,
                       "tasks": score(arrays, has_group="group" in arrays)})
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


def main(argv: list[str], prog: str = "ssr_tf evaluate") -> int:
  p = task.config_parser(prog, "Evaluate a trained model: AUC, GAUC, LogLoss, normalized "
                               "entropy (NE) and calibration per task.")
  p.add_argument("--checkpoint", default=None, help="checkpoint prefix (default: newest)")
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  args = p.parse_args(argv)
  result = evaluate(task.config_from_args(args), args.checkpoint, args.split)
  print(format_table(result))
  print(json.dumps(result))
  return 0
