"""What a conversion writes besides the shards: vocab/, spec.yaml, stats.json, config.yaml.

Layout of the output folder::

  DIR/train/part-00000.tfrecord.gz ...   (also valid/, test/; ".tfrecord" uncompressed)
  DIR/vocab/<feature>.txt                 value<TAB>count, training split, by count
  DIR/spec.yaml                           ssr_tf.features.load_spec
  DIR/stats.json                          rows, positives, vocab sizes, OOV rates
  DIR/config.yaml                         ssr_tf train --config DIR/config.yaml

With ``--ids dynamic`` there is no vocab/: categoricals are declared ``dynamic: {capacity,
admit_after}`` (multi-valued ones ``hash_buckets: capacity``) and stats.json reports their
missing rates, not vocabulary sizes or OOV rates.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Optional

import yaml

from ssr_tf.errors import ConfigError
from ssr_tf.features import DynamicIds, Feature, FeatureSpec
from ssr_tf.pipelines import transforms
from ssr_tf.pipelines.schema import OutField
from ssr_tf.pipelines.sources import Plan
from ssr_tf.pipelines.transforms import SPLITS

MODEL = {"name": "ssr", "embedding_dim": 16,
         "backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 8, "view_dim": 32,
                      "impl": "auto"}}


def shard_name(split: str, index: int, compression: str) -> str:
  return f"{split}/part-{index:05d}.tfrecord" + (".gz" if compression == "GZIP" else "")


def record_options(compression: str, gzip_level: int):
  """tf.io.TFRecordOptions of the shards (same in every runner, so the bytes agree)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if compression != "GZIP":
    return tf.io.TFRecordOptions(compression_type="")
  return tf.io.TFRecordOptions(compression_type="GZIP", compression_level=gzip_level)


def shard_count(rows: int, shard_size: int) -> int:
  """Shards of a split: ceil(rows / shard_size), and one (empty) shard for no rows."""
  return max(1, -(-rows // shard_size))


def writable(value: Any) -> bool:
  """Whether a value fits on one line of a vocabulary file."""
  if not isinstance(value, str):
    return True
  return value != "" and "\t" not in value and value.splitlines() == [value]


def write_text(path: str, text: str) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as fh:
    fh.write(text)


def write_vocab(path: str, entries: Iterable[tuple[Any, int]]) -> None:
  """Writes ``value<TAB>count`` lines (entries already in vocabulary order)."""
  write_text(path, "".join(f"{v}\t{n}\n" for v, n in entries))


@dataclasses.dataclass
class FeatureSummary:
  """What the spec and stats need to know of one feature after counting.

  Attributes:
    vocab_size: values kept (train count > min_count); the embedding has vocab_size + 1 rows.
    distinct: distinct values in the training split (vocabulary file lines).
    oov: per split, present values the model maps to OOV (rare, unseen or unwritable).
    boundaries: numeric: bucket boundaries on the log1p scale.
    max_len: multi_categorical: values per row in the spec (the longest training
      sequence, capped by the field's max_len).
    min_count: the feature's min_count.
    dynamic: categorical without vocabulary: its dynamic ids (--ids dynamic, or --spec).
    hash_buckets: multi_categorical without vocabulary (--ids dynamic): its hash buckets.
  """
  vocab_size: int = 0
  distinct: int = 0
  oov: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0])
  boundaries: list[float] = dataclasses.field(default_factory=list)
  max_len: int = 1
  min_count: int = 0
  dynamic: Optional[DynamicIds] = None
  hash_buckets: Optional[int] = None


def min_count_of(f: OutField, plan: Plan) -> int:
  return plan.options.min_count if f.min_count is None else f.min_count


def num_buckets_of(f: OutField, plan: Plan) -> int:
  return plan.options.num_buckets if f.num_buckets is None else f.num_buckets


def summarize_local(plan: Plan, acc: transforms.Accumulator, out_dir: str
                    ) -> dict[str, FeatureSummary]:
  """Vocabulary files, boundaries and OOV counts from an in-memory Accumulator."""
  acc.flush()
  out = {}
  dyn = plan.dynamic
  for i, f in enumerate(plan.schema.fields):
    if f.kind == "numeric":
      out[f.name] = FeatureSummary(
          boundaries=transforms.boundaries_from_hist(acc.cells(i), num_buckets_of(f, plan)))
    elif dyn is not None and f.kind == "categorical":
      out[f.name] = FeatureSummary(dynamic=dataclasses.replace(dyn))
    elif dyn is not None and f.kind == "multi_categorical":
      out[f.name] = FeatureSummary(hash_buckets=dyn.capacity,
                                   max_len=max(1, min(f.max_len, acc.max_len.get(i, 0))))
    elif f.kind in ("categorical", "multi_categorical"):
      mc = min_count_of(f, plan)
      entries = [(v, n) for v, n in transforms.sorted_vocab(acc.counts[0][i]) if writable(v)]
      write_vocab(os.path.join(out_dir, "vocab", f"{f.name}.txt"), entries)
      kept = {v for v, n in entries if n > mc}
      oov = [sum(n for v, n in acc.counts[s][i].items() if v not in kept) for s in range(3)]
      out[f.name] = FeatureSummary(vocab_size=len(kept), distinct=len(entries), oov=oov,
                                   max_len=max(1, min(f.max_len, acc.max_len.get(i, 0))),
                                   min_count=mc)
  return out


def check_base_spec(plan: Plan) -> None:
  """--spec: every feature of the given spec must be a feature of the format, same kind."""
  ours = {f.name: f for f in plan.schema.features}
  for feat in plan.base_spec.features:
    f = ours.get(feat.name)
    if f is None:
      raise ConfigError(f"--spec: feature {feat.name!r} is not produced by format "
                        f"{plan.fmt} (it gives {sorted(ours)})")
    if f.kind != feat.type or (feat.type != "numeric" and f.dtype != feat.dtype):
      raise ConfigError(f"--spec: feature {feat.name!r} is {feat.type}/{feat.dtype} in the "
                        f"spec but {f.kind}/{f.dtype} in format {plan.fmt}")


def summarize_with_spec(plan: Plan, acc: transforms.Accumulator, out_dir: str
                        ) -> dict[str, FeatureSummary]:
  """--spec: vocabularies (copied), boundaries and max_len come from an earlier spec; OOV
  counts are measured against its vocabularies."""
  acc.flush()
  idx = {f.name: i for i, f in enumerate(plan.schema.fields)}
  out = {}
  for feat in plan.base_spec.features:
    i = idx[feat.name]
    if feat.type == "numeric":
      out[feat.name] = FeatureSummary(boundaries=list(feat.boundaries))
      continue
    if feat.dynamic is not None:        # not counted (Plan.uncounted)
      out[feat.name] = FeatureSummary(dynamic=dataclasses.replace(feat.dynamic))
      continue
    if feat.vocab_file:
      with open(feat.vocab_file) as fh:
        text = fh.read()
      write_text(os.path.join(out_dir, "vocab", f"{feat.name}.txt"), text)
      vocab = feat.vocabulary()
      kept = set(vocab)
      keep = kept.__contains__
      distinct = sum(1 for line in text.splitlines() if line)
    else:
      n = feat.num_buckets
      keep = (lambda v: True) if n is None else (lambda v, n=n: 0 <= v < n)
      vocab, distinct = [], 0
    oov = [sum(c for v, c in acc.counts[s][i].items() if not keep(v)) for s in range(3)]
    out[feat.name] = FeatureSummary(vocab_size=len(vocab) or (feat.num_buckets or 0),
                                    distinct=distinct, oov=oov, max_len=feat.max_len,
                                    min_count=feat.min_count)
  return out


def build_spec(plan: Plan, summaries: dict[str, FeatureSummary]) -> FeatureSpec:
  if plan.base_spec is not None:
    base = plan.base_spec
    feats = [dataclasses.replace(f, vocab_file=f"vocab/{f.name}.txt") if f.vocab_file else
             dataclasses.replace(f) for f in base.features]
    return FeatureSpec(features=feats, labels=dict(base.labels), group_id=base.group_id)
  feats = []
  for f in plan.schema.features:
    s = summaries[f.name]
    if f.kind == "numeric":
      feats.append(Feature(name=f.name, type="numeric", dtype="float32",
                           transform="log_bucketize", boundaries=list(s.boundaries)))
    elif f.kind == "categorical" and s.dynamic is not None:
      feats.append(Feature(name=f.name, type="categorical", dtype=f.dtype,
                           dynamic=s.dynamic))
    elif f.kind == "categorical":
      feats.append(Feature(name=f.name, type="categorical", dtype=f.dtype,
                           vocab_file=f"vocab/{f.name}.txt", min_count=s.min_count))
    elif s.hash_buckets is not None:
      feats.append(Feature(name=f.name, type="multi_categorical", dtype=f.dtype,
                           hash_buckets=s.hash_buckets, max_len=s.max_len,
                           combiner=f.combiner))
    else:
      feats.append(Feature(name=f.name, type="multi_categorical", dtype=f.dtype,
                           vocab_file=f"vocab/{f.name}.txt", min_count=s.min_count,
                           max_len=s.max_len, combiner=f.combiner))
  return FeatureSpec(features=feats, labels=dict(plan.schema.labels),
                     group_id=plan.schema.group_id or None)


def _rate(num: int, den: int) -> Optional[float]:
  return round(num / den, 6) if den else None


def build_stats(plan: Plan, acc: transforms.Accumulator, summaries: dict[str, FeatureSummary],
                bad_examples: list[str]) -> dict:
  """The stats.json content: only integer counts and rates derived from them, so the
  local and Beam runners write the same file."""
  o = plan.options
  rows = dict(zip(SPLITS, acc.rows))
  stats: dict[str, Any] = {
      "format": plan.fmt,
      "inputs": [{"path": f.path, "split": "rule" if f.source < 0 else SPLITS[f.source]}
                 for f in plan.files],
      "split": plan.split.describe(),
      "vocabularies_from": ("none (--ids dynamic)" if plan.dynamic is not None
                            else plan.base_spec_path or "training split"),
      "options": dataclasses.asdict(o),
      "rows": rows,
      "rows_total": sum(acc.rows),
      "positives": {s: dict(zip(acc.tasks, acc.positives[k])) for k, s in enumerate(SPLITS)},
      "shards": {s: shard_count(acc.rows[k], o.shard_size) for k, s in enumerate(SPLITS)},
      "skipped_rows": acc.bad,
      "bad_rows": bad_examples[:20],
      "features": {},
  }
  if plan.dynamic is not None:
    stats["ids"] = {"kind": "dynamic", **dataclasses.asdict(plan.dynamic)}
  for i, f in enumerate(plan.schema.fields):
    if f.name not in summaries:       # not a feature, or not in the --spec
      continue
    s = summaries[f.name]
    d: dict[str, Any] = {"type": f.kind, "dtype": f.dtype}
    miss = {sp: _rate(acc.missing[k][i], acc.rows[k]) for k, sp in enumerate(SPLITS)}
    if f.kind == "numeric":
      d.update(buckets=len(s.boundaries) + 1, missing_rate=miss)
    elif s.dynamic is not None:         # no vocabulary: nothing was counted per value
      d.update(ids="dynamic", capacity=s.dynamic.capacity,
               admit_after=s.dynamic.admit_after, missing_rate=miss)
    elif s.hash_buckets is not None:
      d.update(hash_buckets=s.hash_buckets, max_len=s.max_len, missing_rate=miss,
               mean_len={sp: _rate(acc.values[k][i], acc.rows[k]) for k, sp in
                         enumerate(SPLITS)})
    elif f.kind == "categorical":
      d.update(vocab_size=s.vocab_size, distinct_train=s.distinct,
               min_count=s.min_count, missing_rate=miss,
               oov_rate={sp: _rate(acc.missing[k][i] + s.oov[k], acc.rows[k])
                         for k, sp in enumerate(SPLITS)})
    else:
      d.update(vocab_size=s.vocab_size, distinct_train=s.distinct,
               min_count=s.min_count, max_len=s.max_len,
               missing_rate=miss,
               mean_len={sp: _rate(acc.values[k][i], acc.rows[k]) for k, sp in
                         enumerate(SPLITS)},
               oov_rate={sp: _rate(s.oov[k], acc.values[k][i]) for k, sp in
                         enumerate(SPLITS)})
    stats["features"][f.name] = d
  return stats


def build_config(plan: Plan, out_dir: str) -> dict:
  """A ready-to-train ExperimentConfig (absolute paths: it runs from any directory)."""
  o = plan.options
  root = out_dir if "://" in out_dir else os.path.abspath(out_dir)
  ext = ".tfrecord.gz" if o.compression == "GZIP" else ".tfrecord"
  return {
      "data": {"spec": f"{root}/spec.yaml",
               **{s: f"{root}/{s}/part-*{ext}" for s in SPLITS},
               "batch_size": o.batch_size, "compression": o.compression},
      "model": json.loads(json.dumps(MODEL)),
      "train": {"model_dir": f"{root}/model", "epochs": o.epochs},
  }


def write_metadata(plan: Plan, out_dir: str, acc: transforms.Accumulator,
                   summaries: dict[str, FeatureSummary], bad_examples: list[str],
                   final_dir: str) -> dict:
  """Writes spec.yaml, stats.json and config.yaml into out_dir (config paths point at
  final_dir, where the outputs end up); returns the stats."""
  spec = build_spec(plan, summaries)
  note = ("; vocab_file paths are relative to this file"
          if any(f.vocab_file for f in spec.features) else "")
  write_text(os.path.join(out_dir, "spec.yaml"),
             f"# written by `ssr_tf data convert`{note}\n" + spec.to_yaml())
  stats = build_stats(plan, acc, summaries, bad_examples)
  write_text(os.path.join(out_dir, "stats.json"), json.dumps(stats, indent=2) + "\n")
  write_text(os.path.join(out_dir, "config.yaml"),
             "# written by `ssr_tf data convert`: ssr_tf train --config <this file>\n"
             + yaml.safe_dump(build_config(plan, final_dir), sort_keys=False))
  return stats
