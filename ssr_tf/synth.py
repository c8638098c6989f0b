"""Synthetic ranking data with known ground truth (`ssr_tf data synth`).

Every record carries its oracle click and pay probabilities, so evaluation reports the
best achievable AUC next to the model's. The click logit is a position effect plus five
interaction components (user cluster x item-category cluster, hour x device, a price
slope that depends on the user cluster, the user's recent categories x the candidate's,
item quality), gated by a `scene` field: in each scene two components are strong and the
rest weak, so which fields matter depends on the context. Many other fields are pure Zipf
noise. Pay happens only after a click: p_pay = p_click * p_cvr.

With ``--mode saturating`` the click logit also gets R sparse, scene-gated k-way rules
over the noise fields: rule r fires when scene = s_r and each of its k fields takes a value
in the rule's "hot" set, adding w_r ~ N(0, sat_weight^2). With the defaults (240 rules,
k = 3) a rule fires on ~2.6% of its scene's rows and 1.6 rules fire per example on average,
so the true signal per impression is sparse (3 of 20 noise fields, given the scene) and
context-dependent while its total complexity (R conjunctions) is large; it lifts the
oracle click AUC from ~0.82 (base components only) to ~0.89. Used by the scaling suite to
test, rather than assume, that dense models saturate as they grow.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import numpy as np

from ssr_tf.features import Feature, FeatureSpec


@dataclasses.dataclass
class SynthConfig:
  rows: int = 200_000
  seed: int = 0
  num_users: int = 300
  num_items: int = 400
  num_categories: int = 20
  clusters: int = 6
  noise_fields: int = 20
  noise_vocab: int = 100
  shards: int = 4
  mode: str = "default"
  min_count: int = 5
  history_len: int = 5
  scenes: int = 4
  sat_rules: int = 240        # saturating mode: number of k-way rules
  sat_order: int = 3          # saturating mode: fields per rule (k)
  sat_hot: float = 0.3        # saturating mode: share of a field's values in a hot set
  sat_weight: float = 1.2     # saturating mode: std of a rule's logit weight


def _zipf(rng: np.random.Generator, n: int, vocab: int, a: float = 1.05) -> np.ndarray:
  """Zipf-like ids in [0, vocab): p(k) ~ 1 / (k + 1)^a over a random permutation."""
  p = 1.0 / np.arange(1, vocab + 1) ** a
  p /= p.sum()
  perm = rng.permutation(vocab)
  return perm[rng.choice(vocab, size=n, p=p)]


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def generate(cfg: SynthConfig) -> dict[str, np.ndarray]:
  """Columns of the whole data set (before the split), including oracle probabilities."""
  rng = np.random.default_rng(cfg.seed)
  world = np.random.default_rng(cfg.seed + 10_000)      # the fixed "truth"
  n, k = cfg.rows, cfg.clusters
  user_cluster = world.integers(0, k, cfg.num_users)
  item_category = world.integers(0, cfg.num_categories, cfg.num_items)
  cat_cluster = world.integers(0, k, cfg.num_categories)
  item_quality = world.normal(0, 0.6, cfg.num_items)
  item_price = np.exp(world.normal(3.0, 1.0, cfg.num_items))
  affinity = world.normal(0, 1.0, (k, k))
  hour_device = world.normal(0, 0.7, (4, 5))
  price_slope = world.normal(0, 0.6, k)
  cvr_cluster = world.normal(0, 0.8, (k, k))
  position_effect = -0.25 * np.arange(8)

  user = _zipf(rng, n, cfg.num_users, a=0.6)
  item = _zipf(rng, n, cfg.num_items, a=0.8)
  cat = item_category[item]
  hour = rng.integers(0, 24, n)
  device = rng.integers(0, 5, n)
  position = rng.integers(0, 8, n)
  price = item_price[item] * np.exp(rng.normal(0, 0.1, n))
  uc, cc = user_cluster[user], cat_cluster[cat]
  # Recent categories the user clicked: mostly from the user's preferred cluster.
  liked = np.argmax(affinity, axis=1)[uc]
  cats_by_cluster = [np.flatnonzero(cat_cluster == c) for c in range(k)]
  hist = np.full((n, cfg.history_len), -1, dtype=np.int64)
  hist_len = rng.integers(0, cfg.history_len + 1, n)
  for j in range(cfg.history_len):
    pick = np.array([members[rng.integers(len(members))] if len(members) else 0
                     for members in (cats_by_cluster[c] for c in liked)])
    rand = rng.integers(0, cfg.num_categories, n)
    val = np.where(rng.random(n) < 0.7, pick, rand)
    hist[:, j] = np.where(j < hist_len, val, -1)
  hist_match = (cat_cluster[np.where(hist >= 0, hist, 0)] == cc[:, None]) & (hist >= 0)
  log_price = (np.log(price) - 3.0)

  # The scene decides which interactions matter for this impression (context-dependent
  # sparsity): each scene weights two of the five components strongly, the rest weakly.
  scene = rng.integers(0, cfg.scenes, n)
  components = np.stack([affinity[uc, cc], hour_device[hour // 6, device],
                         price_slope[uc] * log_price, 0.35 * hist_match.sum(1),
                         item_quality[item]], axis=1)                 # [n, 5]
  gates = np.full((cfg.scenes, components.shape[1]), 0.25)
  for sc in range(cfg.scenes):
    gates[sc, world.choice(components.shape[1], size=2, replace=False)] = 1.6
  logit = -1.6 + position_effect[position] + (gates[scene] * components).sum(1)
  cols: dict[str, np.ndarray] = {
      "scene": scene.astype(np.int64),
      "user_id": user.astype(np.int64), "item_id": item.astype(np.int64),
      "item_category": cat.astype(np.int64), "hour": hour.astype(np.int64),
      "device": device.astype(np.int64), "position": position.astype(np.int64),
      "price": price.astype(np.float32), "history_categories": hist,
  }
  for j in range(cfg.noise_fields):
    cols[f"noise_{j}"] = _zipf(rng, n, cfg.noise_vocab).astype(np.int64)
  cols["noise_score"] = rng.normal(0, 1, n).astype(np.float32)
  cols["query"] = np.array([f"q{v}" for v in _zipf(rng, n, 300)], dtype=object)
  if cfg.mode == "saturating":
    logit = logit + _sparse_pair_signal(cols, cfg, world)
  p_click = _sigmoid(logit)
  p_cvr = _sigmoid(-1.0 + cvr_cluster[uc, cc] - 0.4 * log_price)
  click = (rng.random(n) < p_click).astype(np.float32)
  pay = (click * (rng.random(n) < p_cvr)).astype(np.float32)
  cols.update(click=click, pay=pay, oracle_click=p_click.astype(np.float32),
              oracle_pay=(p_click * p_cvr).astype(np.float32))
  return cols


def _sparse_pair_signal(cols, cfg: SynthConfig, world) -> np.ndarray:
  """Saturating mode: sum_r w_r [scene = s_r] prod_{f in F_r} [x_f in H_{r,f}].

  R rules, each on `sat_order` distinct noise fields and one scene, with hot sets H of
  `sat_hot` of the field's values (Zipf-weighted, so a rule fires on roughly
  sat_hot^k / scenes of the rows).
  """
  names = [f"noise_{j}" for j in range(cfg.noise_fields)]
  if not names:
    return np.zeros(len(cols["user_id"]))
  k = min(cfg.sat_order, len(names))
  total = np.zeros(len(cols["user_id"]))
  for _ in range(cfg.sat_rules):
    fields = world.choice(len(names), size=k, replace=False)
    scene = world.integers(0, cfg.scenes)
    fire = cols["scene"] == scene
    for f in fields:
      hot = world.random(cfg.noise_vocab) < cfg.sat_hot
      fire &= hot[cols[names[f]]]
    total += world.normal(0, cfg.sat_weight) * fire
  return total


def spec_for(cfg: SynthConfig, vocab_dir: str) -> FeatureSpec:
  feats = [
      Feature(name="scene", num_buckets=cfg.scenes),
      Feature(name="user_id", vocab_file=f"{vocab_dir}/user_id.txt", min_count=cfg.min_count),
      Feature(name="item_id", num_buckets=cfg.num_items),
      Feature(name="item_category", num_buckets=cfg.num_categories),
      Feature(name="hour", num_buckets=24),
      Feature(name="device", num_buckets=5),
      Feature(name="position", num_buckets=8),
      Feature(name="price", type="numeric", transform="log_bucketize",
              boundaries=[round(float(b), 3) for b in np.linspace(1.0, 6.5, 23)]),
      Feature(name="history_categories", type="multi_categorical",
              num_buckets=cfg.num_categories, max_len=cfg.history_len, combiner="mean"),
      Feature(name="query", dtype="string", hash_buckets=1000),
      Feature(name="noise_score", type="numeric", transform="dense"),
  ] + [Feature(name=f"noise_{j}", num_buckets=cfg.noise_vocab) for j in range(cfg.noise_fields)]
  return FeatureSpec(features=feats, labels={"click": "click", "pay": "pay"},
                     group_id="user_id", oracle={"click": "oracle_click", "pay": "oracle_pay"})


def serialize_rows(cols: dict[str, np.ndarray], rows: np.ndarray):
  """Yields serialized tf.Example records for `rows` (ints, floats, strings, int lists)."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  kinds, lists = [], []
  for name, col in cols.items():
    sub = col[rows]
    if col.dtype == object:
      kinds.append((name, "bytes"))
      lists.append([v.encode() for v in sub])
    elif col.ndim == 2:
      kinds.append((name, "int64s"))
      lists.append([r[r >= 0].tolist() for r in sub])
    elif np.issubdtype(col.dtype, np.integer):
      kinds.append((name, "int64"))
      lists.append(sub.tolist())
    else:
      kinds.append((name, "float"))
      lists.append(sub.tolist())
  for values in zip(*lists):
    ex = example_pb2.Example()
    fmap = ex.features.feature
    for (name, kind), v in zip(kinds, values):
      if kind == "int64":
        fmap[name].int64_list.value.append(v)
      elif kind == "float":
        fmap[name].float_list.value.append(v)
      elif kind == "bytes":
        fmap[name].bytes_list.value.append(v)
      else:
        fmap[name].int64_list.value.extend(v)
    yield ex.SerializeToString()


def split_ids(n: int, seed: int) -> np.ndarray:
  """0/1/2 = train/valid/test, 8:1:1 at random with `seed`."""
  r = np.random.default_rng(seed + 1).random(n)
  return np.where(r < 0.8, 0, np.where(r < 0.9, 1, 2))


def write(cfg: SynthConfig, output: str) -> dict:
  """Writes train/valid/test shards, vocabularies, spec.yaml and stats.json."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from ssr_tf import metrics  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(output)
  (out / "vocab").mkdir(parents=True, exist_ok=True)
  cols = generate(cfg)
  split = split_ids(cfg.rows, cfg.seed)
  users, counts = np.unique(cols["user_id"][split == 0], return_counts=True)
  (out / "vocab" / "user_id.txt").write_text(
      "".join(f"{u}\t{c}\n" for u, c in zip(users, counts)))
  spec = spec_for(cfg, "vocab")
  (out / "spec.yaml").write_text(spec.to_yaml())
  stats = {"rows": cfg.rows, "seed": cfg.seed, "mode": cfg.mode}
  for s, name in enumerate(("train", "valid", "test")):
    (out / name).mkdir(exist_ok=True)
    rows = np.flatnonzero(split == s)
    writers = [tf.io.TFRecordWriter(str(out / name / f"part-{j:05d}.tfrecord"))
               for j in range(cfg.shards)]
    for r, record in enumerate(serialize_rows(cols, rows)):
      writers[r % cfg.shards].write(record)
    for w in writers:
      w.close()
    y = cols["click"][rows]
    stats[name] = {
        "rows": int(len(rows)), "click_rate": float(y.mean()),
        "pay_rate": float(cols["pay"][rows].mean()),
        "oracle_click_auc": float(metrics.auc(y, cols["oracle_click"][rows])),
        "oracle_pay_auc": float(metrics.auc(cols["pay"][rows], cols["oracle_pay"][rows])),
        "oracle_click_gauc": float(metrics.gauc(y, cols["oracle_click"][rows],
                                                cols["user_id"][rows])),
    }
  (out / "stats.json").write_text(json.dumps(stats, indent=2))
  return stats


def main(argv: list[str], prog: str = "ssr_tf data synth") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--output", required=True, help="output folder")
  p.add_argument("--rows", type=int, default=SynthConfig.rows)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shards", type=int, default=SynthConfig.shards)
  p.add_argument("--mode", choices=["default", "saturating"], default="default")
  p.add_argument("--noise_fields", type=int, default=SynthConfig.noise_fields)
  p.add_argument("--sat_rules", type=int, default=SynthConfig.sat_rules,
                 help="saturating mode: number of sparse scene-gated k-way rules")
  p.add_argument("--sat_order", type=int, default=SynthConfig.sat_order,
                 help="saturating mode: fields per rule")
  args = p.parse_args(argv)
  if args.rows < 10:
    p.error("--rows must be >= 10")
  cfg = SynthConfig(rows=args.rows, seed=args.seed, shards=args.shards, mode=args.mode,
                    noise_fields=args.noise_fields, sat_rules=args.sat_rules,
                    sat_order=args.sat_order)
  stats = write(cfg, args.output)
  print(json.dumps({"output": args.output, **stats}, indent=2))
  return 0
