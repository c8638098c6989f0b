"""`ssr_tf data convert`: raw Criteo / Avazu / Taobao / CSV / interaction logs -> TFRecords
+ spec.

Example (Criteo's train.txt as released)::

  ssr_tf data convert --format criteo --input train.txt --output data/criteo
  ssr_tf train --config data/criteo/config.yaml

At industrial scale, without vocabularies (raw ids get embedding rows as training sees
them; memory of the conversion does not grow with the number of distinct ids)::

  ssr_tf data convert --format criteo --input train.txt.gz --output data/criteo \
    --ids dynamic --capacity 1000000 --admit_after 2

See docs/data.md for every flag, the preprocessing rules and the Beam runner.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import yaml

from ssr_tf.errors import ConfigError
from ssr_tf.features import DynamicIds, load_spec
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines import outputs, sources, transforms

RUNNERS = ("local", "DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
IDS = ("vocab", "dynamic")


def build_parser(prog: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog=prog, description="Convert raw click logs into sharded tf.Example TFRecords, "
      "vocabularies, a feature spec, stats and a ready-to-train config.",
      epilog="Arguments after the known ones go to Beam's PipelineOptions "
      "(e.g. --project, --region, --temp_location for DataflowRunner).")
  p.add_argument("--format", required=True,
                 help="criteo | avazu | taobao | csv | interactions (an event log "
                 "user, item, time, label + side tables -> records with behaviour "
                 "histories; needs --mapping, see docs/data.md)")
  p.add_argument("--input", nargs="+", default=[], metavar="PATH",
                 help="input files, split by --split (plain or .gz)")
  p.add_argument("--train_input", nargs="+", default=[], metavar="PATH",
                 help="pre-split training files (instead of --input)")
  p.add_argument("--valid_input", nargs="+", default=[], metavar="PATH",
                 help="pre-split validation files (default: drawn from --train_input rows)")
  p.add_argument("--test_input", nargs="+", default=[], metavar="PATH",
                 help="pre-split test files")
  p.add_argument("--output", required=True, metavar="DIR", help="output folder")
  p.add_argument("--mapping", default=None, metavar="MAP.yaml",
                 help="--format csv: columns -> feature types, labels, group id; "
                 "--format interactions: events, items, users, history")
  p.add_argument("--spec", default=None, metavar="SPEC.yaml",
                 help="reuse the vocabularies, boundaries and min_count of an earlier "
                 "conversion's spec (e.g. to convert new logs for scoring; local runner)")
  p.add_argument("--split", default="random", help="random (default) | time")
  p.add_argument("--ratios", default="8,1,1", help="train,valid,test weights (8,1,1)")
  p.add_argument("--seed", type=int, default=42, help="seed of the random split")
  p.add_argument("--valid_from", default=None,
                 help="--split time: first time value of valid (default: by --ratios)")
  p.add_argument("--test_from", default=None, help="--split time: first time value of test")
  p.add_argument("--min_count", type=int, default=5,
                 help="values seen <= min_count times in train map to OOV (5)")
  p.add_argument("--ids", default="vocab",
                 help="vocab (default): categoricals get counted vocabularies (min_count) | "
                 "dynamic: every single-valued categorical is declared `dynamic: {capacity, "
                 "admit_after}` in the spec, no vocabularies are counted or written "
                 "(multi-valued fields get hash_buckets = --capacity)")
  p.add_argument("--capacity", type=int, default=None, metavar="N",
                 help="--ids dynamic: embedding rows per feature for admitted ids (required)")
  p.add_argument("--admit_after", type=int, default=None, metavar="K",
                 help="--ids dynamic: an id gets its own row after training saw it K "
                 "times (1)")
  p.add_argument("--num_buckets", type=int, default=64,
                 help="quantile buckets per numeric feature, at most (64)")
  p.add_argument("--max_len", type=int, default=50,
                 help="values kept per multi-valued field (50)")
  p.add_argument("--shard_size", type=int, default=200_000, help="records per shard")
  p.add_argument("--compression", default="gzip", help="gzip (default) | none")
  p.add_argument("--gzip_level", type=int, default=6,
                 help="zlib level of gzip shards: 1 (fastest, ~1.5x larger) .. 9 (6)")
  p.add_argument("--skip_bad_rows", type=int, default=0, metavar="N",
                 help="skip and report up to N bad rows instead of failing (0)")
  p.add_argument("--overwrite", action="store_true", help="replace an earlier conversion")
  p.add_argument("--runner", default="local",
                 help="local (default) | DirectRunner | DataflowRunner | FlinkRunner | "
                 "SparkRunner (Apache Beam; an environment from requirements-beam.txt)")
  p.add_argument("--chunk_mb", type=float, default=64.0,
                 help="Beam: input bytes per parallel chunk (64)")
  p.add_argument("--batch_size", type=int, default=1024, help="config.yaml data.batch_size")
  p.add_argument("--epochs", type=int, default=1, help="config.yaml train.epochs")
  p.add_argument("--strict_keys", action="store_true",
                 help="--format interactions: an event whose item (user) is not in the "
                 "side table fails the run (default: counted, features missing)")
  p.add_argument("--sort_rows", type=int, default=1_000_000, metavar="N",
                 help="--format interactions: events sorted in memory per chunk when the "
                 "input is not in time order (external sort; 1000000)")
  p.add_argument("--progress_every", type=float, default=5.0, help="seconds between "
                 "progress lines on stderr")
  p.add_argument("--quiet", action="store_true", help="no progress lines")
  return p


def _ratios(text: str) -> tuple:
  try:
    vals = tuple(float(x) if "." in x else int(x) for x in text.split(","))
  except ValueError:
    raise ConfigError(f"--ratios: expected three numbers like 8,1,1, got {text!r}") from None
  if len(vals) != 3:
    raise ConfigError(f"--ratios: expected three numbers like 8,1,1, got {text!r}")
  return vals


def _check(args: argparse.Namespace) -> None:
  for name in ("min_count", "skip_bad_rows"):
    if getattr(args, name) < 0:
      raise ConfigError(f"--{name}: must be >= 0")
  for name in ("num_buckets", "max_len", "shard_size", "batch_size", "epochs"):
    if getattr(args, name) <= 0:
      raise ConfigError(f"--{name}: must be > 0")
  if not 1 <= args.gzip_level <= 9:
    raise ConfigError("--gzip_level: must be 1..9")
  if args.num_buckets < 2:
    raise ConfigError("--num_buckets: must be >= 2")
  if args.compression.lower() not in ("gzip", "none", ""):
    raise ConfigError(f"--compression: {args.compression!r} is not gzip or none")
  if args.split not in ("random", "time"):
    raise ConfigError(f"--split: {args.split!r} is not random or time")
  if args.runner not in RUNNERS:
    raise ConfigError(f"--runner: {args.runner!r} is not one of {', '.join(RUNNERS)}")
  presplit = args.train_input or args.valid_input or args.test_input
  if args.input and presplit:
    raise ConfigError("give either --input (split by --split) or --train_input/"
                      "--valid_input/--test_input (pre-split), not both")
  if not args.input and not presplit:
    raise ConfigError("no input: give --input PATH... or --train_input PATH...")
  if presplit and not args.train_input:
    raise ConfigError("--valid_input/--test_input need --train_input")
  if (args.valid_from is None) != (args.test_from is None):
    raise ConfigError("--valid_from and --test_from go together")
  if args.valid_from is not None and args.split != "time":
    raise ConfigError("--valid_from/--test_from need --split time")
  if args.chunk_mb <= 0:
    raise ConfigError("--chunk_mb: must be > 0")
  _check_ids(args)


def _check_ids(args: argparse.Namespace) -> None:
  if args.ids not in IDS:
    raise ConfigError(f"--ids: {args.ids!r} is not one of {', '.join(IDS)}")
  if args.ids != "dynamic":
    for name in ("capacity", "admit_after"):
      if getattr(args, name) is not None:
        raise ConfigError(f"--{name}: only applies with --ids dynamic")
    return
  if args.capacity is None:
    raise ConfigError("--capacity: --ids dynamic needs --capacity N (rows per feature)")
  if args.capacity <= 0:
    raise ConfigError(f"--capacity: must be > 0, got {args.capacity}")
  if args.admit_after is not None and args.admit_after < 1:
    raise ConfigError(f"--admit_after: must be >= 1, got {args.admit_after}")
  if args.spec:
    raise ConfigError("--spec: cannot be combined with --ids dynamic (an earlier spec "
                      "keeps its own ids; drop one of the two)")
  if args.runner != "local":
    raise ConfigError(f"--runner {args.runner}: --ids dynamic is supported by --runner "
                      "local only")


def plan_from_args(args: argparse.Namespace) -> sources.Plan:
  """Validates the flags and reads the input headers into a Plan."""
  _check(args)
  mapping_raw = None
  if args.mapping:
    path = pathlib.Path(args.mapping)
    if not path.is_file():
      raise ConfigError(f"--mapping: file not found: {args.mapping}")
    try:
      mapping_raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
      raise ConfigError(f"--mapping {args.mapping}: not valid YAML ({e})") from None
  mapping = schema_lib.load_mapping(args.format, mapping_raw, where=args.mapping or "")
  ratios = _ratios(args.ratios)
  presplit = None
  if args.train_input:
    presplit = [args.train_input, args.valid_input, args.test_input]
    if args.split == "time":
      raise ConfigError("--split time applies to --input, not to pre-split files")
    rule = transforms.SplitRule("files", ratios, args.seed,
                                carve_valid=not args.valid_input)
  elif args.split == "time":
    rule = transforms.SplitRule(
        "time", ratios, args.seed,
        valid_from=None if args.valid_from is None else schema_lib.time_key(args.valid_from),
        test_from=None if args.test_from is None else schema_lib.time_key(args.test_from),
        auto_time=args.valid_from is None)
  else:
    rule = transforms.SplitRule("random", ratios, args.seed)
  options = sources.Options(
      min_count=args.min_count, num_buckets=args.num_buckets, max_len=args.max_len,
      shard_size=args.shard_size,
      compression="GZIP" if args.compression.lower() == "gzip" else "",
      gzip_level=args.gzip_level, skip_bad_rows=args.skip_bad_rows,
      batch_size=args.batch_size, epochs=args.epochs)
  plan = sources.make_plan(args.format, mapping, args.input, presplit, rule, options)
  if args.ids == "dynamic":
    plan.dynamic = DynamicIds(capacity=args.capacity, admit_after=args.admit_after or 1)
  if args.spec:
    plan.base_spec = load_spec(args.spec)
    plan.base_spec_path = args.spec
    outputs.check_base_spec(plan)
  return plan


def convert(argv: list[str], prog: str = "ssr_tf data convert") -> dict:
  """Runs a conversion from command-line arguments; returns a summary dict."""
  parser = build_parser(prog)
  args, extra = parser.parse_known_args(argv)
  if extra and args.runner == "local":
    raise ConfigError(f"unknown arguments {extra} (Beam options need --runner)")
  if args.format == "interactions":
    from ssr_tf.pipelines import interactions  # pylint: disable=import-outside-toplevel
    _check(args)
    return interactions.convert_from_args(args)
  if args.format not in schema_lib.FORMATS:
    raise ConfigError(f"--format: unknown format {args.format!r}; choose one of "
                      f"{', '.join(schema_lib.FORMATS + ('interactions',))}")
  plan = plan_from_args(args)
  start = time.time()
  if args.runner == "local":
    from ssr_tf.pipelines import local  # pylint: disable=import-outside-toplevel
    stats = local.run(plan, args.output, overwrite=args.overwrite, progress=not args.quiet,
                      progress_every=args.progress_every)
  else:
    from ssr_tf.pipelines import beam_pipeline  # pylint: disable=import-outside-toplevel
    stats = beam_pipeline.run(plan, args.output, runner=args.runner, beam_args=extra,
                              overwrite=args.overwrite,
                              chunk_bytes=int(args.chunk_mb * (1 << 20)))
  seconds = time.time() - start
  rows = stats["rows_total"] + stats["skipped_rows"]
  return {"output": args.output, "runner": args.runner, "rows": stats["rows"],
          "positives": stats["positives"], "skipped_rows": stats["skipped_rows"],
          "seconds": round(seconds, 2), "rows_per_s": round(rows / max(seconds, 1e-9), 1),
          "config": str(pathlib.Path(args.output) / "config.yaml")}


def main(argv: list[str], prog: str = "ssr_tf data convert") -> int:
  summary = convert(argv, prog)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
