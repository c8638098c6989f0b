"""`ssr_tf compare`: is model A's AUC above model B's on the same rows, beyond test-set noise?

Both models score every record of one split in a single pass; per task the paired DeLong
test gives AUC_a - AUC_b, its standard error and a two-sided p-value. The p-value covers
the sampling of the evaluation rows only, not training randomness (seeds): a difference
that flips sign across training runs can still have a small p here.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from ssr_tf import metrics, task
from ssr_tf.config import TASKS, ExperimentConfig, load_config
from ssr_tf.errors import UserError, output_file
from ssr_tf.evaluation import check_slice_feature, json_safe, predict_split, slice_rows
from ssr_tf.features import load_spec


def check_same_data(a: ExperimentConfig, b: ExperimentConfig, split: str) -> None:
  """Both configs must read the same records (the same files, however the patterns are
  written) with the same labels, and model B's features must be among model A's with the
  same dtype and shape: the records are parsed once with A's spec and fed to both. So B
  may use fewer features or pool a history differently (another spec file) than A."""
  pa, pb = getattr(a.data, split), getattr(b.data, split)
  if sorted(map(os.path.realpath, tf.io.gfile.glob(pa))) != sorted(
      map(os.path.realpath, tf.io.gfile.glob(pb))):
    raise UserError(f"config key 'data.{split}' reads other files in the two configs "
                    f"({pa!r} vs {pb!r}): compare needs the same records")
  if a.data.spec == b.data.spec:
    return
  sa, sb = load_spec(a.data.spec), load_spec(b.data.spec)
  if sa.labels != sb.labels:
    raise UserError(f"config key 'data.spec': the labels differ ({sa.labels} in "
                    f"{a.data.spec} vs {sb.labels} in {b.data.spec})")
  for f in sb.features:
    try:
      fa = sa.feature(f.name)
    except KeyError:
      raise UserError(f"config key 'data.spec': feature {f.name!r} of {b.data.spec} is not "
                      f"in {a.data.spec}; compare parses the records with the first "
                      "config's spec (swap --config and --against)") from None
    if (fa.dtype, sa.value_shape(fa)) != (f.dtype, sb.value_shape(f)):
      raise UserError(f"config key 'data.spec': feature {f.name!r} has dtype/shape "
                      f"{fa.dtype}{sa.value_shape(fa)} in {a.data.spec} but "
                      f"{f.dtype}{sb.value_shape(f)} in {b.data.spec}")


def _paired(arrays: dict, rows: Optional[np.ndarray] = None) -> dict:
  """{task: delong_test(...) + rows} over all rows, or the rows of mask `rows`."""
  tasks = {}
  for t in TASKS:
    if f"label_{t}" in arrays:
      y, a, b = (arrays[k] if rows is None else arrays[k][rows]
                 for k in (f"label_{t}", f"{t}_prob", f"b:{t}_prob"))
      tasks[t] = {**metrics.delong_test(y, a, b), "rows": int(y.size)}
  return tasks


def compare(cfg_a: ExperimentConfig, cfg_b: ExperimentConfig, split: str = "test",
            checkpoint_a: Optional[str] = None, checkpoint_b: Optional[str] = None,
            slice_by: Optional[str] = None, max_slices: int = 20) -> dict:
  """{"a": ckpt, "b": ckpt, "split", "tasks": {task: delong_test(...) + rows}}, and with
  `slice_by` the same per value of that feature under "slices"."""
  check_same_data(cfg_a, cfg_b, split)
  spec, model_a = task.build(cfg_a)
  if slice_by:
    check_slice_feature(spec, slice_by)
  _, model_b = task.build(cfg_b)
  path_a = task.restore(model_a, cfg_a.train.model_dir, checkpoint_a)
  path_b = task.restore(model_b, cfg_b.train.model_dir, checkpoint_b)
  arrays = predict_split(model_a, spec, cfg_a, split, others={"b": model_b}, slice_by=slice_by)
  result = {"a": path_a, "b": path_b, "split": split, "tasks": _paired(arrays)}
  if slice_by:
    result["slices"] = {"by": slice_by, "values": [
        {"value": label, "tasks": _paired(arrays, rows)}
        for label, rows in slice_rows(arrays["slice"], max_slices)]}
  return json_safe(result)


COLUMNS = ("auc_a", "auc_b", "diff", "se", "z", "p_value")


def _row(name: str, r: dict, width: int) -> str:
  cells = "".join(f"{'-':>10}" if r[c] is None else f"{r[c]:>10.4f}" for c in COLUMNS)
  return f"{name[:width - 1]:<{width}}" + cells + f"{r['rows']:>10d}"


def format_table(result: dict) -> str:
  """One row per task; with slices, then one row per (value, task)."""
  lines = [f"{'task':<6}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'rows':>10}"]
  lines += [_row(t, r, 6) for t, r in result["tasks"].items()]
  if "slices" in result:
    lines.append(f"{result['slices']['by'] + ' / task':<22}" +
                 "".join(f"{c:>10}" for c in COLUMNS) + f"{'rows':>10}")
    for v in result["slices"]["values"]:
      lines += [_row(f"{v['value']} / {t}", r, 22) for t, r in v["tasks"].items()]
  return "\n".join(lines)


def main(argv: list[str], prog: str = "ssr_tf compare") -> int:
  p = task.config_parser(prog, "Paired DeLong test of two trained models' AUCs on one split "
                               "(A = --config, B = --against).")
  p.add_argument("--against", required=True, help="experiment YAML of model B")
  p.add_argument("--set_against", action="append", default=[], metavar="KEY.PATH=VALUE",
                 help="override a value of B's config (repeatable)")
  p.add_argument("--checkpoint", default=None, help="A's checkpoint prefix (default: newest)")
  p.add_argument("--checkpoint_against", default=None, help="B's checkpoint prefix")
  p.add_argument("--split", default="test", choices=["train", "valid", "test"])
  p.add_argument("--output", default=None, help="also write the result JSON here")
  p.add_argument("--slice_by", default=None, metavar="FEATURE",
                 help="also test each value of this categorical feature separately")
  p.add_argument("--max_slices", type=int, default=20,
                 help="most frequent values tested alone; the rest pooled as (other)")
  args = p.parse_args(argv)
  if args.max_slices < 1:
    p.error("--max_slices must be >= 1")
  if args.output:
    output_file(args.output)             # before the scoring, not after it
  result = compare(task.config_from_args(args), load_config(args.against, args.set_against),
                   args.split, args.checkpoint, args.checkpoint_against, args.slice_by,
                   args.max_slices)
  print(format_table(result))
  if args.output:
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2, allow_nan=False))
  print(json.dumps(result))
  return 0
