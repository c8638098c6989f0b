"""`ssr_tf data convert --format interactions`: an event log -> ranking records with
behaviour histories.

Input: events (user, item, time, label) in --input files, optional item and user side
tables, and a mapping (pipelines/interactions_mapping.py). Output: the usual converter
folder (train/valid/test shards of tf.Example, vocab/, spec.yaml, stats.json,
config.yaml), where every event's record also holds its user's history:
``hist_<item>`` (the last `history.length` items strictly before the event, most recent
first) and ``hist_<feature>`` for the item side features listed in
`history.side_features`.

Passes over the events:

1. A scan: parses every row (bad rows are reported here), decides the id columns'
   dtypes, counts the time values (``--split time`` thresholds), checks side table keys
   and whether the rows are in time order.
2. Events in time order: the rows themselves when they already are; else an external
   sort: chunks of ``--sort_rows`` events are sorted in memory and spilled to temporary
   files, which ``heapq.merge`` reads back in order.

Events are ordered by (time, user, item, label), so the output does not depend on the
input's row order. All events of one time value are emitted before any of them enters a
history: events with equal times never see each other. Memory: the users' histories
(users x length), one sort chunk, the events of one time value, the side tables and the
vocabulary counts; not the number of events.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Optional

import yaml

from ssr_tf.errors import ConfigError, DataError
from ssr_tf.pipelines import interactions_mapping as im
from ssr_tf.pipelines import local, outputs, sources, transforms
from ssr_tf.pipelines import schema as schema_lib
from ssr_tf.pipelines.interactions_events import (BadRows, Scan, Setup, by_time,
                                                  make_setup, scan, sort_events, typed,
                                                  typed_events)
from ssr_tf.pipelines.interactions_history import HistoryEncoder, Histories, time_parts
from ssr_tf.pipelines.interactions_history import with_entries
from ssr_tf.pipelines.transforms import SPLITS

DNN = {"name": "dnn", "embedding_dim": 16, "backbone": {"hidden_units": [400, 400, 400]}}

# ---------------------------------------------------------------------------------------
# The run.


def check_args(args: argparse.Namespace) -> None:
  for flag, bad in (("--train_input/--valid_input/--test_input",
                     args.train_input or args.valid_input or args.test_input),
                    ("--spec", args.spec), ("--ids dynamic", args.ids != "vocab"),
                    (f"--runner {args.runner}", args.runner != "local")):
    if bad:
      raise ConfigError(f"{flag}: not supported by --format interactions (give the event "
                        "log as --input; local runner, counted vocabularies)")
  if not args.input:
    raise ConfigError("no input: give --input EVENTS.csv...")
  if args.sort_rows < 1:
    raise ConfigError(f"--sort_rows: must be >= 1, got {args.sort_rows}")


def convert_from_args(args: argparse.Namespace) -> dict:
  """Runs `ssr_tf data convert --format interactions` (flags already parsed and checked
  by convert._check); returns the summary line's dict."""
  from ssr_tf.pipelines import convert as convert_lib  # pylint: disable=import-outside-toplevel
  check_args(args)
  ratios = convert_lib._ratios(args.ratios)  # pylint: disable=protected-access
  m = im.load(args.mapping)
  options = sources.Options(
      min_count=args.min_count, num_buckets=args.num_buckets, max_len=args.max_len,
      shard_size=args.shard_size,
      compression="GZIP" if args.compression.lower() == "gzip" else "",
      gzip_level=args.gzip_level, skip_bad_rows=args.skip_bad_rows,
      batch_size=args.batch_size, epochs=args.epochs)
  if args.split == "time":
    def when(flag: str, s: Optional[str]):
      try:
        return None if s is None else im.parse_time(s)
      except ValueError as err:
        raise ConfigError(f"--{flag}: {err}") from None
    rule = transforms.SplitRule("time", ratios, args.seed,
                                valid_from=when("valid_from", args.valid_from),
                                test_from=when("test_from", args.test_from),
                                auto_time=args.valid_from is None)
  else:
    rule = transforms.SplitRule("random", ratios, args.seed)
  start = time.time()
  stats = run(m, args.input, args.output, rule, options, sort_rows=args.sort_rows,
              strict_keys=args.strict_keys, overwrite=args.overwrite,
              progress=not args.quiet, progress_every=args.progress_every)
  seconds = time.time() - start
  return {"output": args.output, "runner": "local", "rows": stats["rows"],
          "positives": stats["positives"], "skipped_rows": stats["skipped_rows"],
          "seconds": round(seconds, 2),
          "rows_per_s": round(stats["rows_total"] / max(seconds, 1e-9), 1),
          "config": os.path.join(args.output, "config.yaml")}


def run(m: im.InteractionMapping, inputs: list[str], out_dir: str,
        rule: transforms.SplitRule, options: sources.Options, sort_rows: int = 1_000_000,
        strict_keys: bool = False, overwrite: bool = False, progress: bool = True,
        progress_every: float = 5.0) -> dict:
  """Converts an event log into `out_dir`; returns the stats (also in stats.json).
  A failed run leaves nothing behind (the outputs are committed at the end)."""
  created, tmp = local.missing_dirs(out_dir), None
  try:
    tmp = local.prepare_output(out_dir, overwrite)
    bad = BadRows(options.skip_bad_rows)
    st = make_setup(m, inputs, options.max_len, bad)
    sc = scan(st, bad, strict_keys, count_times=rule.auto_time)
    typed(st)
    st.bad_lines = bad.seen
    if rule.auto_time:
      rule.valid_from, rule.test_from = transforms.time_thresholds(sc.times, rule.ratios)
      rule.auto_time = False
    sc.times = {}
    stats = _convert(st, sc, bad, rule, options, sort_rows, tmp, out_dir, progress,
                     progress_every)
    shutil.rmtree(os.path.join(tmp, "_sort"), ignore_errors=True)
    local.commit_output(tmp, out_dir)
  except BaseException:
    local.discard_output(tmp, created)
    raise
  return stats


def _convert(st: Setup, sc: Scan, bad: BadRows, rule: transforms.SplitRule,
             o: sources.Options, sort_rows: int, tmp: str, final_dir: str, progress: bool,
             every: float) -> dict:
  schema = schema_lib.Schema(st.fields, {"click": st.fields[-1].name}, st.fields[0].name,
                             st.mapping.events.time)
  acc = transforms.Accumulator(schema)
  encoder = transforms.ExampleEncoder(st.fields)
  writers = [local.ShardWriter(tmp, s, o.shard_size, o.compression, o.gzip_level)
             for s in SPLITS]
  hist = Histories(st)
  hist_encoder = HistoryEncoder(st, hist)
  tf_names = st.mapping.events.time_features
  L = hist.length
  lengths = [[0] * (L + 1) for _ in SPLITS]
  bar = local.Progress(0, every, progress)
  no_user = tuple(im.missing_value(f) for f in st.user_fields)
  events = typed_events(st)
  if not sc.in_order:
    events = sort_events(events, sort_rows, os.path.join(tmp, "_sort"))
  k = largest = 0
  try:
    for group in by_time(events):
      t = group[0][0]
      largest = max(largest, len(group))
      parts = time_parts(t) if tf_names else {}
      tvals = [parts[n] for n in tf_names]
      for _, user, item, label in group:
        s = rule.random_split(k) if rule.kind == "random" else rule.assign(k, -1, t)
        k += 1
        values = ([user, item] + tvals + list(st.items.get(item, hist.no_side))
                  + list(st.users.get(user, no_user))
                  + [label])
        acc.add(s, values)
        record = encoder.encode(values)
        if L:
          h = hist.of(user)
          lengths[s][len(h)] += 1
          record = with_entries(record, hist_encoder.encode(h))
        writers[s].write(record)
      hist.add(group)
      bar.update(k, 0, len(bad.lines))
  finally:
    for w in writers:
      w.close()
  bar.update(k, 0, len(bad.lines), final=True)
  acc.flush()
  if acc.rows[0] == 0:
    raise DataError("the training split is empty (check --ratios / --split / the inputs); "
                    "vocabularies come from it")
  sc.largest_group = largest
  return _write_metadata(st, sc, bad, rule, o, acc, schema, lengths, hist, tmp, final_dir)


def _write_metadata(st: Setup, sc: Scan, bad: BadRows, rule: transforms.SplitRule,
                    o: sources.Options, acc: transforms.Accumulator,
                    schema: schema_lib.Schema, lengths: list[list[int]], hist: Histories,
                    tmp: str, final_dir: str) -> dict:
  """vocab/ (train counts), spec.yaml with the sequence features, stats.json and a
  config.yaml (DNN)."""
  plan = sources.Plan("interactions", None, [lay.file for lay in st.events], schema, rule, o)
  summaries = outputs.summarize_local(plan, acc, tmp)
  for name, K in ((st.item_fields[k].name, K) for k, K in st.hist_sides if K):
    summaries[name].max_len = K          # records pad history side values to K
  spec = outputs.build_spec(plan, summaries)
  time_feats = st.mapping.events.time_features
  for i, f in enumerate(spec.features):
    if f.name in time_feats:
      os.remove(os.path.join(tmp, "vocab", f"{f.name}.txt"))
      spec.features[i] = dataclasses.replace(f, vocab_file=None, min_count=0,
                                             num_buckets=im.TIME_FEATURES[f.name])
  d = yaml.safe_load(spec.to_yaml())
  if st.hist_fields:
    h = st.mapping.history
    item = st.fields[1].name
    d["features"].append({"name": st.hist_fields[0].name, "type": "sequence",
                          "dtype": st.item_dtype, "share_with": item, "max_len": h.length,
                          "pooling": h.pooling})
    for f, s in zip(st.hist_fields[1:], h.side_features):
      d["features"].append({"name": f.name, "type": "sequence", "dtype": f.dtype,
                            "share_with": s, "max_len": h.length,
                            "side_of": st.hist_fields[0].name})
  outputs.write_text(os.path.join(tmp, "spec.yaml"),
                     "# written by `ssr_tf data convert --format interactions`; vocab_file "
                     "paths are relative to this file\n"
                     + yaml.safe_dump(d, sort_keys=False))
  stats = outputs.build_stats(plan, acc, summaries, bad.lines)
  stats["skipped_rows"] = len(bad.lines)
  for f in time_feats:                  # identity ids, no vocabulary
    d = stats["features"][f]
    stats["features"][f] = {"type": d["type"], "dtype": d["dtype"],
                            "num_buckets": im.TIME_FEATURES[f],
                            "missing_rate": d["missing_rate"]}
  users = set().union(*(acc.counts[s][0] for s in range(3)))
  items = set().union(*(acc.counts[s][1] for s in range(3)))
  inter: dict[str, Any] = {
      "events": sum(acc.rows), "input_in_time_order": sc.in_order,
      "largest_equal_time_group": sc.largest_group,
      "distinct_users": len(users), "distinct_items": len(items),
      "missing_keys": {}}
  if rule.kind == "time":
    inter["time_cell_seconds"] = sc.time_step or None   # None: thresholds from exact times
  del users, items
  for kind, count, keys in (("items", sc.missing_items, sc.missing_item_keys),
                            ("users", sc.missing_users, sc.missing_user_keys)):
    table = getattr(st.mapping, kind)
    if table is not None:
      inter["missing_keys"][kind] = {"table": table.path, "events": count,
                                     "distinct": len(keys),
                                     "examples": sorted(map(str, keys))[:10]}
  if st.hist_fields:
    h = st.mapping.history
    inter["history"] = {
        "feature": st.hist_fields[0].name, "length": h.length,
        "positives_only": h.positives_only, "side_features": list(h.side_features),
        "users_with_history": len(hist.state),
        "mean_len": {sp: outputs._rate(sum(n * c for n, c in enumerate(lengths[k])),  # pylint: disable=protected-access
                                       acc.rows[k]) for k, sp in enumerate(SPLITS)},
        "empty_rate": {sp: outputs._rate(lengths[k][0], acc.rows[k])  # pylint: disable=protected-access
                       for k, sp in enumerate(SPLITS)},
        "len_counts": {sp: {str(n): c for n, c in enumerate(lengths[k]) if c}
                       for k, sp in enumerate(SPLITS)}}
  stats["interactions"] = inter
  outputs.write_text(os.path.join(tmp, "stats.json"),
                     json.dumps(stats, indent=2) + "\n")
  config = outputs.build_config(plan, final_dir)
  config["model"] = dict(DNN, backbone=dict(DNN["backbone"]))
  outputs.write_text(os.path.join(tmp, "config.yaml"),
                     "# written by `ssr_tf data convert`: ssr_tf train --config <this file>\n"
                     + yaml.safe_dump(config, sort_keys=False))
  return stats
