"""Exact ranking metrics in NumPy: AUC (rank-based, ties averaged), LogLoss, normalized
entropy, calibration, GAUC, and DeLong's paired test of two AUCs on the same rows."""
from __future__ import annotations

import math

import numpy as np


def _midranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x with ties given their average rank."""
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
  starts = np.concatenate([[0], boundaries])
  ends = np.concatenate([boundaries, [x.size]])
  ranks = np.empty(x.size, dtype=np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


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
  ranks = _midranks(s)
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def logloss(labels, probs, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
  y = np.asarray(labels, dtype=np.float64).ravel()
  p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(labels, probs, eps: float = 1e-7) -> float:
  """NE = LogLoss / H(base rate), H(r) = -r log r - (1 - r) log(1 - r): below 1 the model
  beats always predicting the observed rate. NaN when only one class is present."""
  y = np.asarray(labels, dtype=np.float64).ravel()
  rate = float(y.mean()) if y.size else float("nan")
  if not 0.0 < rate < 1.0:
    return float("nan")
  base = -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))
  return logloss(y, probs, eps) / base


def calibration(labels, probs) -> float:
  """sum(predicted probabilities) / sum(labels): expected over observed positives (1 is
  calibrated, above 1 over-predicts). NaN when there are no positives."""
  positives = float(np.asarray(labels, dtype=np.float64).sum())
  if positives == 0.0:
    return float("nan")
  return float(np.asarray(probs, dtype=np.float64).sum()) / positives


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


def placements(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  """DeLong's structural components: V10[i] = P(s_i > s_neg) + 0.5 P(tie) for each positive
  i, V01[j] = P(s_pos > s_j) + 0.5 P(tie) for each negative j; both average to the AUC."""
  y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
  s = np.asarray(scores, dtype=np.float64).ravel()
  pos, neg = s[y], s[~y]
  ranks = _midranks(s)
  v10 = (ranks[y] - _midranks(pos)) / neg.size
  v01 = 1.0 - (ranks[~y] - _midranks(neg)) / pos.size
  return v10, v01


def delong_test(labels, scores_a, scores_b) -> dict:
  """Paired DeLong test of AUC_a - AUC_b on the same rows: z = diff / sqrt(Var(diff)),
  Var from the placements' covariance (DeLong et al. 1988; midrank form of Sun & Xu 2014).

  Returns auc_a, auc_b, diff, se, z and the two-sided p_value (all NaN when either class has
  fewer than 2 rows, as the variances need; p = 1 when Var(diff) = 0, e.g. the two scorings
  rank every pair alike).
  """
  y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
  n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
  nan = float("nan")
  if n_pos < 2 or n_neg < 2:
    return {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p_value": nan}
  (a10, a01), (b10, b01) = placements(y, scores_a), placements(y, scores_b)
  auc_a, auc_b = float(a10.mean()), float(b10.mean())
  var = (np.var(a10 - b10, ddof=1) / n_pos) + (np.var(a01 - b01, ddof=1) / n_neg)
  diff = auc_a - auc_b
  se = float(np.sqrt(max(var, 0.0)))
  if se == 0.0:
    z, p = 0.0, 1.0
  else:
    z = diff / se
    p = float(math.erfc(abs(z) / math.sqrt(2.0)))
  return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se, "z": float(z), "p_value": p}
