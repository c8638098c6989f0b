"""Exact ranking metrics in NumPy: AUC (rank-based, ties averaged), LogLoss, GAUC."""
from __future__ import annotations

import numpy as np


def auc(labels, scores) -> float:
  """P(score_pos > score_neg) + 0.5 P(tie), via average ranks (Mann-Whitney U).

  NaN when only one class is present.
  """
  y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
  s = np.asarray(scores, dtype=np.float64).ravel()
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  ranks = np.empty(s.size, dtype=np.float64)
  # Average rank over each run of equal scores.
  boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [s.size]])
  avg = (starts + ends + 1) / 2.0                     # 1-based average rank of the run
  ranks[order] = np.repeat(avg, ends - starts)
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def logloss(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
  y = np.asarray(labels, dtype=np.float64).ravel()
  p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(labels, scores, groups) -> float:
  """Impression-weighted mean of per-group AUC over groups that have both classes."""
  y = np.asarray(labels).ravel()
  s = np.asarray(scores).ravel()
  g = np.asarray(groups).ravel()
  order = np.argsort(g, kind="mergesort")
  g_sorted = g[order]
  cuts = np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1
  total, weight = 0.0, 0
  for idx in np.split(order, cuts):
    yy = y[idx] > 0.5
    if yy.all() or not yy.any():
      continue
    total += auc(yy, s[idx]) * idx.size
    weight += idx.size
  return float(total / weight) if weight else float("nan")
