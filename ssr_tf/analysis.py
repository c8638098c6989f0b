"""`ssr_tf analyze`: the paper's mechanism figures for a trained checkpoint.

Figure 1 (implicit sparsity of the first dense layer W [d_in, d_out]):
  near_zero = mean[|W| < 1e-3];  top_power = sum_{i in top 4% rows} p_i / sum_i p_i,  p_i = sum_j W_ij^2.
Figure 5 (ICS sparsity per SSR layer): share of exact zeros in h_l = ICS(x_l W_l^proj) on
  validation rows, plus the training curve when the ICS TensorBoard logs exist.
Figure 6 (view diversity): C_ij = <vec W_i^proj, vec W_j^proj> / (|W_i| |W_j|) per layer, as
  a heatmap PNG, next to the same statistic for a freshly initialised model.

Usage: ``ssr_tf analyze --model_dir DIR`` (reads DIR/config.yaml and the newest checkpoint
in DIR/ckpt) or ``--checkpoint DIR/ckpt/ckpt-3``; ``--config`` overrides the config file.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from ssr_tf import data as data_lib
from ssr_tf import task
from ssr_tf.callbacks import filtered_views, sparsity_stats, ssr_layers
from ssr_tf.config import load_config
from ssr_tf.errors import UserError

NEAR_ZERO = 1e-3
TOP_SHARE = 0.04


def first_dense_kernel(model) -> Optional[tuple[str, np.ndarray]]:
  """(name, W [d_in, d_out]) of the backbone's first layer that reads the flattened fields.

  SSR-D: W^proj of layer 0 ([d_in, views * expanded_dim]); MLP-style backbones: the first
  Dense kernel whose input width is F * dim. None when there is none (e.g. SSR-S).
  """
  d_in = len(model.spec.features) * model.model_cfg.embedding_dim
  for v in model.backbone.trainable_variables:
    name = v.name
    if "proj_kernel" in name and v.shape[0] == d_in:
      return name, v.numpy().reshape(d_in, -1)
  for v in model.backbone.trainable_variables:
    if v.shape.rank == 2 and v.shape[0] == d_in and "kernel" in v.name:
      return v.name, v.numpy()
  return None


def weight_sparsity(w: np.ndarray, near_zero: float = NEAR_ZERO,
                    top_share: float = TOP_SHARE) -> dict:
  """Figure 1's two numbers for a kernel W [d_in, d_out] (rows = input dims)."""
  a = np.abs(w)
  power = np.sum(w.astype(np.float64) ** 2, axis=1)             # per input dim
  order = np.sort(power)[::-1]
  k = max(1, int(round(top_share * len(order))))
  cum = np.cumsum(order) / max(order.sum(), 1e-30)
  return {"shape": list(w.shape), "near_zero_share": float(np.mean(a < near_zero)),
          "near_zero_threshold": near_zero, "top_dims_share": top_share,
          "top_dims_power_share": float(cum[k - 1]),
          "dims_for_80pct_power": float((np.searchsorted(cum, 0.8) + 1) / len(order)),
          "median_abs_weight": float(np.median(a))}


def field_power(w: np.ndarray, fields: list[str]) -> dict[str, float]:
  """Share of the kernel's weight power on each field's input dims, largest first
  (rows of W are the F contiguous blocks of `dim` dims of the flattened embeddings)."""
  per = np.sum(w.astype(np.float64).reshape(len(fields), -1) ** 2, axis=1)
  per = per / max(per.sum(), 1e-30)
  return {fields[i]: round(float(per[i]), 5) for i in np.argsort(per)[::-1]}


def view_similarity(model) -> list[np.ndarray]:
  """Per dynamic SSR layer, the [views, views] cosine similarity of vec(W_i^proj)."""
  out = []
  for layer in ssr_layers(model):
    if layer.mode != "dynamic":
      continue
    w = layer.proj_kernel.numpy()                                 # [d_in, views, e]
    m = np.transpose(w, (1, 0, 2)).reshape(w.shape[1], -1)        # [views, d_in * e]
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    out.append(m @ m.T)
  return out


def _off_diagonal(c: np.ndarray) -> np.ndarray:
  return c[~np.eye(len(c), dtype=bool)]


def read_ics_curves(log_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """ics/* scalars from TensorBoard event files under log_dir (ICSSparsityLogger)."""
  curves: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(log_dir.rglob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag.startswith("ics/"):
          number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                    else float(value.simple_value))
          curves.setdefault(value.tag, []).append((int(event.step), number))
  return {k: sorted(v) for k, v in curves.items()}


def _plots(out: pathlib.Path, w: Optional[np.ndarray], sims: list[np.ndarray],
           init_sims: list[np.ndarray], curves: dict) -> list[str]:
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib missing (pip install 'ssr_tf[plot]'): no PNGs written")
    return []
  written = []
  if w is not None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a = np.abs(w).ravel()
    a1.hist(np.log10(np.maximum(a, 1e-8)), bins=80, color="tab:blue")
    a1.axvline(np.log10(NEAR_ZERO), color="k", ls="--")
    a1.set_xlabel("log10 |w|")
    a1.set_title(f"first layer: {np.mean(a < NEAR_ZERO):.1%} of |w| < 1e-3")
    power = np.sort(np.sum(w.astype(np.float64) ** 2, axis=1))[::-1]
    cum = np.cumsum(power) / power.sum()
    a2.plot(np.arange(1, len(cum) + 1) / len(cum) * 100, cum * 100)
    a2.axvline(TOP_SHARE * 100, color="k", ls="--")
    a2.set_xlabel("top input dims (%)")
    a2.set_ylabel("share of weight power (%)")
    fig.tight_layout()
    fig.savefig(out / "fig1_weight_sparsity.png", dpi=110)
    plt.close(fig)
    written.append(str(out / "fig1_weight_sparsity.png"))
  if sims:
    fig, axes = plt.subplots(2, len(sims), figsize=(4 * len(sims), 7.2), squeeze=False)
    for l, (c, c0) in enumerate(zip(sims, init_sims or sims)):
      for row, (mat, tag) in enumerate(((c, "trained"), (c0, "at init"))):
        ax = axes[row][l]
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"layer {l + 1} {tag}: mean |off-diag| {np.abs(_off_diagonal(mat)).mean():.3f}",
                     fontsize=9)
        ax.set_xlabel("view")
        ax.set_ylabel("view")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.savefig(out / "fig6_view_similarity.png", dpi=110)
    plt.close(fig)
    written.append(str(out / "fig6_view_similarity.png"))
  sparsity = {k: v for k, v in curves.items() if k.startswith("ics/sparsity/")}
  if sparsity:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for tag, pts in sorted(sparsity.items()):
      a1.plot(*zip(*pts), label=tag.split("/")[-1])
      mag = curves.get(tag.replace("sparsity", "magnitude"))
      if mag:
        a2.plot(*zip(*mag), label=tag.split("/")[-1])
    a1.set_xlabel("step")
    a1.set_ylabel("ICS sparsity")
    a2.set_xlabel("step")
    a2.set_ylabel("mean |h| (nonzero)")
    a1.legend()
    fig.tight_layout()
    fig.savefig(out / "fig5_ics_sparsity.png", dpi=110)
    plt.close(fig)
    written.append(str(out / "fig5_ics_sparsity.png"))
  return written


def analyze(cfg, checkpoint: Optional[str], output: pathlib.Path, rows: int = 4096,
            log_dir: Optional[pathlib.Path] = None, plots: bool = True) -> dict:
  """Figures 1, 5, 6 for a checkpoint; writes analysis.json (+ PNGs) under `output`."""
  spec, model = task.build(cfg)
  path = task.restore(model, cfg.train.model_dir, checkpoint)
  output.mkdir(parents=True, exist_ok=True)
  result: dict = {"checkpoint": path, "model": cfg.model.name}
  kernel = first_dense_kernel(model)
  if kernel is not None:
    names = [f.name for f in spec.features]
    result["fig1"] = {"variable": kernel[0], **weight_sparsity(kernel[1]),
                      "field_power_share": field_power(kernel[1], names)}
  split = "valid" if cfg.data.valid else "test"
  pattern = getattr(cfg.data, split)
  if pattern and ssr_layers(model):
    ds = data_lib.make_dataset(pattern, spec, rows, training=False, key=f"data.{split}",
                               compression=cfg.data.compression)
    features = next(iter(ds))[0]
    stats = sparsity_stats(filtered_views(model, features))
    result["fig5"] = {"split": split, "rows": int(tf.shape(next(iter(features.values())))[0]),
                      "layers": stats}
  sims = view_similarity(model)
  init_sims: list[np.ndarray] = []
  if sims:
    _, fresh = task.build(cfg)     # same config, untrained: the chance level of the statistic
    init_sims = view_similarity(fresh)
    result["fig6"] = {"layers": [
        {"mean_abs_off_diagonal": float(np.abs(_off_diagonal(c)).mean()),
         "max_abs_off_diagonal": float(np.abs(_off_diagonal(c)).max()),
         "init_mean_abs_off_diagonal": float(np.abs(_off_diagonal(c0)).mean()),
         "matrix": np.round(c, 4).tolist()} for c, c0 in zip(sims, init_sims)]}
  log_dir = log_dir or pathlib.Path(cfg.train.model_dir) / "logs"
  curves = read_ics_curves(log_dir) if log_dir.is_dir() else {}
  if curves:
    result["fig5"] = {**result.get("fig5", {}), "curves": {
        k: [[s, round(v, 5)] for s, v in pts] for k, pts in curves.items()}}
  if plots:
    result["png"] = _plots(output, kernel[1] if kernel else None, sims, init_sims, curves)
  (output / "analysis.json").write_text(json.dumps(result, indent=2))
  result["written"] = str(output / "analysis.json")
  return result


def summary(result: dict) -> str:
  lines = [f"model {result['model']}  checkpoint {result['checkpoint']}"]
  if "fig1" in result:
    f = result["fig1"]
    lines.append(f"Fig.1 {f['variable']} {f['shape']}: {f['near_zero_share']:.1%} of weights "
                 f"|w| < 1e-3; top 4% input dims hold {f['top_dims_power_share']:.1%} of the "
                 f"weight power; 80% of the power in the top {f['dims_for_80pct_power']:.1%} dims")
  if "fig1" in result:
    top = list(result["fig1"]["field_power_share"].items())
    uniform = 1.0 / len(top)
    lines.append("      weight power by field (uniform = " + f"{uniform:.1%}): " + ", ".join(
        f"{k} {v:.1%}" for k, v in top[:6]) + " ... " + ", ".join(
        f"{k} {v:.1%}" for k, v in top[-3:]))
  for l, s in enumerate(result.get("fig5", {}).get("layers", [])):
    lines.append(f"Fig.5 layer {l + 1}: ICS sparsity {s['sparsity']:.1%}, mean nonzero |h| "
                 f"{s['magnitude']:.3f}")
  for l, s in enumerate(result.get("fig6", {}).get("layers", [])):
    lines.append(f"Fig.6 layer {l + 1}: mean |cos| between views {s['mean_abs_off_diagonal']:.3f} "
                 f"(max {s['max_abs_off_diagonal']:.3f}; at init "
                 f"{s['init_mean_abs_off_diagonal']:.3f})")
  for p in result.get("png", []):
    lines.append(f"wrote {p}")
  return "\n".join(lines)


def main(argv: list[str], prog: str = "ssr_tf analyze") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", default=None, help="trained model dir (config.yaml + ckpt/)")
  p.add_argument("--checkpoint", default=None,
                 help="checkpoint prefix, e.g. DIR/ckpt/ckpt-3 (default: newest in model_dir)")
  p.add_argument("--config", default=None, help="experiment YAML (default: MODEL_DIR/config.yaml)")
  p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
  p.add_argument("--output", default=None, help="where to write (default: MODEL_DIR/analysis)")
  p.add_argument("--rows", type=int, default=4096, help="validation rows for ICS sparsity")
  p.add_argument("--logdir", default=None,
                 help="TensorBoard logs with ics/* curves (default: MODEL_DIR/logs)")
  p.add_argument("--no_plots", action="store_true", help="JSON only")
  args = p.parse_args(argv)
  model_dir = args.model_dir
  if model_dir is None and args.checkpoint:
    model_dir = str(pathlib.Path(args.checkpoint).parent.parent)   # DIR/ckpt/ckpt-N
  if model_dir is None and args.config is None:
    raise UserError("give --model_dir, --checkpoint or --config")
  config = args.config or str(pathlib.Path(model_dir) / "config.yaml")
  if not pathlib.Path(config).is_file():
    raise UserError(f"config not found: {config} (pass --config)")
  overrides = list(args.set) + ([f"train.model_dir={model_dir}"] if model_dir else [])
  cfg = load_config(config, overrides)
  if cfg.model.name in ("ssr", "ssr_msn"):
    cfg.model.backbone = {**cfg.model.backbone, "impl": "tf"}
  output = pathlib.Path(args.output or pathlib.Path(cfg.train.model_dir) / "analysis")
  result = analyze(cfg, args.checkpoint, output, rows=args.rows,
                   log_dir=pathlib.Path(args.logdir) if args.logdir else None,
                   plots=not args.no_plots)
  print(summary(result))
  print(json.dumps({"written": result["written"], "png": result.get("png", [])}))
  return 0
