"""Quality at equal memory: dynamic ids vs hash_buckets with the same embedding rows.

One synthetic Criteo file with Zipf ids in the large fields (``ssr_tf data
synth_criteo``) is converted once (``ssr_tf data convert --ids dynamic``, random 8:1:1
split). Every arm then trains the same DNN on the same records; only the categorical
features' row assignment differs, and every categorical field gets the same number of
table rows in an arm and its hash counterpart:

* ``dyn_a<K>_f<F>``: ``dynamic: {capacity: C, admit_after: K, fallback_rows: F}``,
  a table of 1 + F + C rows;
* ``hash_f<F>``: ``hash_buckets: C + F``, a table of C + F + 1 rows (the same).

A reference arm, ``no_large`` (hash_f1 without the large fields, first seed only), says
what the large fields are worth at all.

Each arm trains once per seed (``train.seed``, ``data.deterministic: true``; one epoch,
no validation pass) and is scored on the test split (``ssr_tf evaluate``); per run the
large fields' dynamic-id state (admissions, evictions, LRU window, count-min sketch fill,
share of test values with an own row) and mean row norms are read from the checkpoint.
A paired DeLong test compares one dynamic arm with its hash twin per seed. Prints one
JSON line per run, then one summary line: per arm mean and sample sd of test click AUC,
and paired differences (same seed): each dynamic arm against the hash arm of equal rows,
dynamic arms that differ in one setting, every arm against no_large. Results accumulate
in WORK/runs.jsonl; a run already there is not trained again (delete the line to redo
it), and the data steps are skipped when their outputs exist.

ssr_tf runs from an export of one commit (--pin, default HEAD), not from the working
tree, so that edits made to the tree while the study runs cannot mix code versions.

Usage (the defaults are the values of benchmarks/RESULTS_scale_quality.md)::

  TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 \\
    .venv/bin/python benchmarks/scale/equal_memory.py --work /tmp/eqmem --pin 132dc6c
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

import yaml

ARM = re.compile(r"^(?:dyn_a(?P<k>\d+)_f(?P<f>\d+)|hash_f(?P<hf>\d+)|(?P<none>no_large))$")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--work", default="/tmp/eqmem", help="folder for data, models and results")
  p.add_argument("--python", default=sys.executable, help="interpreter that runs ssr_tf")
  # data
  p.add_argument("--rows", type=int, default=2_000_000, help="synth_criteo rows")
  p.add_argument("--large_fields", type=int, default=4)
  p.add_argument("--id_space", type=int, default=20_000_000)
  p.add_argument("--zipf", type=float, default=1.1)
  p.add_argument("--zipf_offset", type=float, default=1000.0)
  p.add_argument("--data_seed", type=int, default=0, help="synth_criteo --seed")
  # row budget
  p.add_argument("--capacity", type=int, default=30_000,
                 help="C: dynamic rows for admitted ids per field (convert --capacity)")
  p.add_argument("--convert_admit_after", type=int, default=2,
                 help="convert --admit_after (the arms set their own)")
  p.add_argument("--arms", default="hash_f1,dyn_a2_f1;hash_f3000,dyn_a2_f3000;dyn_a1_f1",
                 help="dyn_a<K>_f<F> (dynamic, admit_after K, fallback_rows F) and hash_f<F> "
                 "(hash_buckets C + F), comma-separated; ';' separates groups: each group "
                 "runs all seeds before the next starts")
  p.add_argument("--seeds", default="1,2,3", help="train.seed values")
  p.add_argument("--reference", default="no_large",
                 help="reference arms trained with the first seed only: no_large = hash_f1 "
                 "without the large fields ('' for none)")
  # training
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--early_stopping_patience", type=int, default=1,
                 help="with --epochs > 1 (then the validation split is scored every epoch; "
                 "with one epoch it is not read)")
  p.add_argument("--hidden_units", default="400,400,400")
  p.add_argument("--embedding_dim", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=1024)
  p.add_argument("--learning_rate", type=float, default=1e-3)
  p.add_argument("--embedding_optimizer", default="lazy_adam")
  p.add_argument("--compare", default="dyn_a2_f1:hash_f1",
                 help="A:B: paired DeLong test of A vs B on the test split, per seed "
                 "('' to skip)")
  p.add_argument("--pin", default="HEAD", metavar="REV",
                 help="run ssr_tf from `git archive REV` of this repository, exported to "
                 "WORK/src/REV, so that edits to the working tree during the study change "
                 "nothing ('' to run the working tree as it is)")
  p.add_argument("--dry_run", action="store_true",
                 help="write data, specs and configs, print the plan, train nothing")
  return p.parse_args(argv)


REPO = pathlib.Path(__file__).resolve().parents[2]
WORK_DIR = ["/"]                   # cwd of the ssr_tf processes (set to --work)
PINNED = "EQUAL_MEMORY_PINNED"     # set in the re-executed process: the pinned commit


def pin(args) -> None:
  """Exports `args.pin` of the repository and re-executes this script with that copy of
  ssr_tf first on PYTHONPATH (the editable install's finder comes after it). The package
  layout of setup.py is rebuilt: ops/, pipelines/ and serving/ become ssr_tf.ops,
  ssr_tf.pipelines and ssr_tf.serving; the built custom-op library is copied alongside."""
  commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.pin],
                          check=True, capture_output=True, text=True).stdout.strip()
  root = pathlib.Path(args.work).resolve() / "src" / commit
  if not (root / "ssr_tf" / "__init__.py").exists():
    tree = root.with_name(commit + ".tree")
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    root.mkdir(parents=True, exist_ok=True)
    (tree / "ssr_tf").rename(root / "ssr_tf")
    for sub in ("ops", "pipelines", "serving"):
      (tree / sub).rename(root / "ssr_tf" / sub)
    built = REPO / "ops" / "_ssr_ops.so"
    if built.exists():
      (root / "ssr_tf" / "ops" / built.name).write_bytes(built.read_bytes())
  e = env()
  e["PYTHONPATH"] = os.pathsep.join([str(root)] + [x for x in [e.get("PYTHONPATH")] if x])
  e[PINNED] = commit
  os.execve(args.python, [args.python, str(pathlib.Path(__file__).resolve()),
                          *sys.argv[1:]], e)


def env():
  e = dict(os.environ)
  e.setdefault("TF_USE_LEGACY_KERAS", "1")
  e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return e


def run(cmd, log: pathlib.Path) -> tuple[str, float]:
  """Runs `cmd` (stdout+stderr to `log`); returns (stdout, seconds); raises on failure."""
  start = time.time()
  with open(log, "w") as fh:
    # cwd: not the repository, whose ssr_tf/ `python -m` would import before the pinned copy
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env(),
                          cwd=WORK_DIR[0], check=False)
    fh.write("\n--- stdout ---\n" + proc.stdout)
  if proc.returncode:
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
  return proc.stdout, time.time() - start


def last_json(text: str) -> dict:
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      return json.loads(line)
  raise ValueError("no JSON line in output")


def ssr_tf(args, *words) -> list[str]:
  return [args.python, "-m", "ssr_tf", *words]


def prepare_data(args, work: pathlib.Path) -> dict:
  """generate -> convert, each skipped when its output exists; returns their summaries."""
  raw = work / "raw.txt.gz"
  synth_json, data = work / "synth.json", work / "data"
  if not synth_json.exists():
    out, _ = run(ssr_tf(args, "data", "synth_criteo", "--output", str(raw),
                           "--rows", str(args.rows), "--large_fields", str(args.large_fields),
                           "--id_space", str(args.id_space), "--zipf", str(args.zipf),
                           "--zipf_offset", str(args.zipf_offset), "--seed",
                           str(args.data_seed), "--progress_every", "0"),
                    work / "synth.log")
    synth_json.write_text(json.dumps(last_json(out)))
  synth = json.loads(synth_json.read_text())
  convert_json = work / "convert.json"
  if not convert_json.exists():
    out, _ = run(ssr_tf(args, "data", "convert", "--format", "criteo", "--input", str(raw),
                           "--output", str(data), "--ids", "dynamic", "--capacity",
                           str(args.capacity), "--admit_after",
                           str(args.convert_admit_after)), work / "convert.log")
    convert_json.write_text(json.dumps(last_json(out)))
  return {"synth": synth, "convert": json.loads(convert_json.read_text())}


def id_stats(work: pathlib.Path, large: list[str], capacity: int) -> dict:
  """Per large field, from the converted records: distinct ids of the training split,
  ids seen >= 2 times, the share of training values on the `capacity` most frequent ids,
  and the share of test values whose id is among them or was never seen in training
  (cached in WORK/id_stats.json)."""
  cache = work / "id_stats.json"
  if cache.exists():
    return json.loads(cache.read_text())
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def values(split):
    desc = {f: tf.io.FixedLenFeature([], tf.string, default_value="") for f in large}
    files = sorted(tf.io.gfile.glob(str(work / "data" / split / "part-*")))
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP").batch(16384)
          .map(lambda x: tf.io.parse_example(x, desc)))
    got = {f: [] for f in large}
    for batch in ds:
      for f in large:
        got[f].append(batch[f].numpy())
    return {f: (lambda v: v[v != b""])(np.concatenate(v)) for f, v in got.items()}
  train, test = values("train"), values("test")
  out = {}
  for f in large:
    ids, counts = np.unique(train[f], return_counts=True)
    order = np.argsort(-counts, kind="stable")       # ties: the lower id first
    in_top = np.zeros(ids.size, dtype=bool)
    in_top[order[:capacity]] = True
    pos = np.minimum(np.searchsorted(ids, test[f]), ids.size - 1)
    seen = ids[pos] == test[f]
    out[f] = {"train_values": int(train[f].size), "distinct_train": int(ids.size),
              "ids_seen_ge2": int((counts >= 2).sum()),
              "train_share_top_capacity": round(float(counts[in_top].sum() / train[f].size),
                                                4),
              "count_at_rank_capacity": int(counts[order[min(capacity, ids.size) - 1]]),
              "top_id_count": int(counts[order[0]]),
              "test_share_in_top_capacity": round(float((seen & in_top[pos]).mean()), 4),
              "test_share_unseen": round(float((~seen).mean()), 4)}
  cache.write_text(json.dumps(out))
  return out


def arm_spec(base: dict, arm: str, capacity: int, large: list[str]) -> tuple[dict, int]:
  """The converted spec with every categorical field's rows set by `arm`; returns
  (spec, table rows per categorical field). `no_large` (a reference, not an equal-memory
  arm): hash_f1 without the large fields."""
  m = ARM.match(arm)
  if not m:
    raise SystemExit(f"--arms: {arm!r} is not dyn_a<K>_f<F>, hash_f<F> or no_large")
  spec = json.loads(json.dumps(base))
  if m.group("none"):
    spec["features"] = [f for f in spec["features"] if f["name"] not in large]
    m = ARM.match("hash_f1")
  rows = None
  for f in spec["features"]:
    if f.get("type") != "categorical":
      continue
    for key in ("dynamic", "hash_buckets", "vocab_file", "num_buckets", "min_count"):
      f.pop(key, None)
    if m.group("hf") is not None:
      f["hash_buckets"] = capacity + int(m.group("hf"))
      rows = f["hash_buckets"] + 1
    else:
      fallback = int(m.group("f"))
      f["dynamic"] = {"capacity": capacity, "admit_after": int(m.group("k")),
                      "fallback_rows": fallback}
      rows = 1 + fallback + capacity
  return spec, rows


def hash_twin(arm: str) -> str | None:
  m = ARM.match(arm)
  return f"hash_f{m.group('f')}" if m and m.group("f") is not None else None


def write_config(args, work: pathlib.Path, data_cfg: dict, arm: str, seed: int) -> pathlib.Path:
  run_dir = work / "runs" / f"{arm}_s{seed}"
  run_dir.mkdir(parents=True, exist_ok=True)
  cfg = {
      "data": {**data_cfg, "spec": str(work / "specs" / f"{arm}.yaml"),
               "valid": data_cfg["valid"] if args.epochs > 1 else "",
               "batch_size": args.batch_size, "deterministic": True},
      "model": {"name": "dnn", "embedding_dim": args.embedding_dim,
                "backbone": {"hidden_units": [int(u) for u in args.hidden_units.split(",")]}},
      "train": {"model_dir": str(run_dir / "model"), "epochs": args.epochs,
                "early_stopping_patience": args.early_stopping_patience,
                "learning_rate": args.learning_rate, "optimizer": "adam",
                "embedding_optimizer": args.embedding_optimizer, "seed": seed,
                "verbose": 2, "ics_log_every_steps": 0},
  }
  path = run_dir / "config.yaml"
  path.write_text(yaml.safe_dump(cfg, sort_keys=False))
  return path


def dynamic_stats(checkpoint: str, test_glob: str, large: list[str]) -> dict:
  """Per dynamic feature of the large fields, at the scored checkpoint: rows in use,
  admissions and evictions over training, and the share of the test split's present
  values that have a row of their own (the rest use fallback rows)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from ssr_tf.layers.dynamic_ids import fingerprint  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(checkpoint)
  names = [n for n, _ in tf.train.list_variables(checkpoint)]
  out: dict = {}
  for name in names:
    m = re.search(r"id_tables/(C\d+)/(used|admissions|evictions)/", name)
    if m and m.group(1) in large:
      out.setdefault(m.group(1), {})[m.group(2)] = int(reader.get_tensor(name))
  if not out:
    return out
  for f, st in out.items():
    def var(v, f=f):
      return reader.get_tensor(f"model/embedding/id_tables/{f}/{v}/.ATTRIBUTES/VARIABLE_VALUE")
    step, last_seen = int(var("step")), var("last_seen")
    # LRU window: steps since the least recently seen resident id was last seen
    st["lru_window_steps"] = int(step - last_seen.min())
    if any(f"id_tables/{f}/sketch/" in n for n in names):
      sketch = var("sketch")
      st["sketch_cell_mean"] = round(float(sketch.mean()), 2)
      # an id passes admit_after=2 at first sight when both its cells already hold >= 1
      st["sketch_cells_ge1"] = round(float((sketch >= 1).mean()), 5)
  files = sorted(tf.io.gfile.glob(test_glob))
  desc = {f: tf.io.FixedLenFeature([], tf.string, default_value="") for f in out}
  ds = (tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
        .map(lambda x: tf.io.parse_example(x, desc)))
  for f in out:
    own = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, default_value=0,
                                                empty_key=-2, deleted_key=-3)
    keys = reader.get_tensor(next(n for n in names if f"id_tables/{f}/table/" in n
                                  and n.endswith("table-keys")))
    own.insert(tf.constant(keys, tf.int64), tf.ones(len(keys), tf.int64))
    present = hit = 0
    for batch in ds:
      k = fingerprint(batch[f])
      mask = k >= 0
      present += int(tf.reduce_sum(tf.cast(mask, tf.int64)))
      hit += int(tf.reduce_sum(tf.where(mask, own.lookup(k), 0)))
    out[f]["test_own_row_share"] = round(hit / max(present, 1), 4)
  return out


def row_norms(checkpoint: str, large: list[str]) -> dict:
  """Mean L2 norm of the large fields' embedding rows at the scored checkpoint, averaged
  over the fields: dynamic tables split into fallback rows and admitted-id rows, hash
  tables over all rows (row 0, missing, left out). Rows start from U(-0.05, 0.05) in
  every dimension, norm about 0.05 sqrt(dim / 3) ("init"); a mean close to it says the
  rows moved little in training."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(checkpoint)
  names = [n for n, _ in tf.train.list_variables(checkpoint)]
  parts: dict = {}
  dim = 0
  for f in large:
    table = f"model/embedding/emb_{f}/.ATTRIBUTES/VARIABLE_VALUE"
    if table not in names:
      continue
    values = reader.get_tensor(table)
    dim = values.shape[1]
    norms = np.linalg.norm(values, axis=1)
    keys = [n for n in names if f"id_tables/{f}/slot_keys/" in n]
    if keys:
      fallback = norms.size - 1 - reader.get_tensor(keys[0]).size
      parts.setdefault("fallback", []).append(norms[1:1 + fallback].mean())
      parts.setdefault("admitted", []).append(norms[1 + fallback:].mean())
    else:
      parts.setdefault("hashed", []).append(norms[1:].mean())
  return {"init": round(0.05 * math.sqrt(dim / 3), 4),
          **{k: round(float(np.mean(v)), 4) for k, v in parts.items()}}


def run_arm(args, work: pathlib.Path, cfg_path: pathlib.Path, arm: str, seed: int,
            large: list[str]) -> dict:
  run_dir = cfg_path.parent
  model_dir = run_dir / "model"
  model_dir.mkdir(exist_ok=True)
  counts = work / "record_counts.json"     # the training shards' record counts, counted once
  if counts.exists() and not (model_dir / counts.name).exists():
    (model_dir / counts.name).write_text(counts.read_text())
  train_out, train_wall = run(ssr_tf(args, "train", "--config", str(cfg_path), "--overwrite"),
                              run_dir / "train.log")
  train = last_json(train_out)
  if not counts.exists() and (model_dir / counts.name).exists():
    counts.write_text((model_dir / counts.name).read_text())
  eval_out, eval_wall = run(ssr_tf(args, "evaluate", "--config", str(cfg_path),
                                   "--split", "test"), run_dir / "evaluate.log")
  result = last_json(eval_out)
  click = result["tasks"]["click"]
  test_glob = yaml.safe_load(cfg_path.read_text())["data"]["test"]
  return {"arm": arm, "seed": seed, "test_auc": click["auc"], "test_logloss": click["logloss"],
          "test_ne": click.get("ne"), "calibration": click.get("calibration"),
          "train_auc": train["final"].get("click_auc"), "epochs_run": train["epochs_run"],
          "train_seconds": train["seconds"], "train_wall_s": round(train_wall, 1),
          "eval_wall_s": round(eval_wall, 1),
          "dynamic": dynamic_stats(result["checkpoint"], test_glob, large),
          "row_norms": row_norms(result["checkpoint"], large)}


def done_now(results: list[dict]) -> set:
  return {(r["arm"], r["seed"]) for r in results}


def paired_delong(run_a: pathlib.Path, run_b: pathlib.Path, split: str = "test") -> dict:
  """Paired DeLong test of run A's test click AUC against run B's on the same rows.

  ``ssr_tf compare`` refuses two configs whose data.spec differ, although these specs
  parse the same columns with the same dtypes and differ only in how ids map to rows; so
  both models score the split read through A's spec here, in one pass."""
  from ssr_tf import metrics, task  # pylint: disable=import-outside-toplevel
  from ssr_tf.config import load_config  # pylint: disable=import-outside-toplevel
  from ssr_tf.evaluation import predict_split  # pylint: disable=import-outside-toplevel
  cfg_a, cfg_b = (load_config(str(r / "config.yaml")) for r in (run_a, run_b))
  spec_a, model_a = task.build(cfg_a)
  spec_b, model_b = task.build(cfg_b)
  if [(f.name, f.type, f.dtype) for f in spec_a.features] != [
      (f.name, f.type, f.dtype) for f in spec_b.features]:
    raise SystemExit("paired_delong: the specs parse different columns")
  ckpt_a = task.restore(model_a, cfg_a.train.model_dir)
  ckpt_b = task.restore(model_b, cfg_b.train.model_dir)
  arrays = predict_split(model_a, spec_a, cfg_a, split, others={"b": model_b})
  test = metrics.delong_test(arrays["label_click"], arrays["click_prob"], arrays["b:click_prob"])
  return {"a": ckpt_a, "b": ckpt_b, "rows": int(arrays["label_click"].size),
          **{k: float(v) for k, v in test.items()}}


def mean_sd(xs: list[float]) -> dict:
  return {"n": len(xs), "mean": round(statistics.fmean(xs), 5),
          "sd": round(statistics.stdev(xs), 5) if len(xs) > 1 else None}


def summarize(results: list[dict], arms: list[str], seeds: list[int], rows: dict) -> dict:
  by = {(r["arm"], r["seed"]): r for r in results}
  per_arm = {}
  for arm in arms:
    xs = [by[(arm, s)]["test_auc"] for s in seeds if (arm, s) in by]
    if xs:
      per_arm[arm] = {"rows_per_field": rows[arm], **mean_sd(xs),
                      "auc": {s: by[(arm, s)]["test_auc"] for s in seeds if (arm, s) in by},
                      "train_wall_s_mean": round(statistics.fmean(
                          by[(arm, s)]["train_wall_s"] for s in seeds if (arm, s) in by), 1)}
  paired = {}
  pairs = [(a, hash_twin(a)) for a in arms if hash_twin(a) in arms]
  # what each arm gains over a model without the large fields (first seed only)
  pairs += [(a, "no_large") for a in arms if "no_large" in arms and a != "no_large"]
  # dynamic arms that differ in one setting (admit_after or fallback_rows), same capacity
  dyn = [a for a in arms if ARM.match(a).group("f") is not None]
  pairs += [(a, b) for i, a in enumerate(dyn) for b in dyn[i + 1:]
            if (ARM.match(a).group("k") == ARM.match(b).group("k"))
            != (ARM.match(a).group("f") == ARM.match(b).group("f"))]
  for a, b in pairs:
    common = [s for s in seeds if (a, s) in by and (b, s) in by]
    if not common:
      continue
    d = [by[(a, s)]["test_auc"] - by[(b, s)]["test_auc"] for s in common]
    entry = {**mean_sd(d), "per_seed": {s: round(x, 5) for s, x in zip(common, d)},
             "wins": sum(x > 0 for x in d)}
    if len(d) > 1 and entry["sd"]:
      entry["t"] = round(entry["mean"] / (entry["sd"] / math.sqrt(len(d))), 2)
    paired[f"{a} - {b}"] = entry
  return {"summary": True, "arms": per_arm, "paired": paired}


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.pin and not os.environ.get(PINNED):
    pin(args)
  work = pathlib.Path(args.work).resolve()
  WORK_DIR[0] = str(work)
  (work / "specs").mkdir(parents=True, exist_ok=True)
  data = prepare_data(args, work)
  converted = work / "data"
  base_spec = yaml.safe_load((converted / "spec.yaml").read_text())
  data_cfg = yaml.safe_load((converted / "config.yaml").read_text())["data"]
  groups = [[a for a in g.split(",") if a] for g in args.arms.split(";")]
  large = data["synth"]["large_fields"]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  reference = [(a, seeds[0]) for a in args.reference.split(",") if a]
  arms = [a for g in groups for a in g] + [a for a, _ in reference]
  rows = {}
  for arm in arms:
    spec, rows[arm] = arm_spec(base_spec, arm, args.capacity, large)
    (work / "specs" / f"{arm}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
  ids = id_stats(work, large, args.capacity)
  where, _ = run([args.python, "-c", "import ssr_tf; print(ssr_tf.__file__)"],
                 work / "where.log")
  print(json.dumps({"code": os.environ.get(PINNED, "working tree"),
                    "ssr_tf": str(pathlib.Path(where.strip()).parent),
                    "data": data, "ids": ids, "arms": rows, "seeds": seeds}), flush=True)
  results_file = work / "runs.jsonl"
  done = {}
  if results_file.exists():
    for line in results_file.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        done[(r["arm"], r["seed"])] = r
  results = []
  order = [(arm, seed) for g in groups for seed in seeds for arm in g] + reference
  for arm, seed in order:            # within a group seed-major: complete pairs first
    cfg_path = write_config(args, work, data_cfg, arm, seed)
    if (arm, seed) in done:
      r = done[(arm, seed)]
    elif args.dry_run:
      print(json.dumps({"plan": arm, "seed": seed, "config": str(cfg_path)}), flush=True)
      continue
    else:
      r = {**run_arm(args, work, cfg_path, arm, seed, large), "rows_per_field": rows[arm]}
      with open(results_file, "a") as fh:
        fh.write(json.dumps(r) + "\n")
    results.append(r)
    print(json.dumps(r), flush=True)
  if args.compare and not args.dry_run:
    a, b = args.compare.split(":")
    for seed in seeds:
      if (a, seed) not in done_now(results) or (b, seed) not in done_now(results):
        continue
      out_file = work / f"delong_{a}_vs_{b}_s{seed}.json"
      if not out_file.exists():
        out_file.write_text(json.dumps(paired_delong(work / "runs" / f"{a}_s{seed}",
                                                     work / "runs" / f"{b}_s{seed}")))
      print(json.dumps({"delong": f"{a} - {b}", "seed": seed,
                        **json.loads(out_file.read_text())}), flush=True)
  print(json.dumps(summarize(results, arms, seeds, rows)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
