"""AUC / GAUC / LogLoss against brute force."""
import itertools

import numpy as np
import pytest

from ssr_tf import metrics


def brute_auc(y, s):
  pos = [v for v, l in zip(s, y) if l]
  neg = [v for v, l in zip(s, y) if not l]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = rng.random(200) < 0.3
  s = np.round(rng.random(200) * 10) / 10             # heavy ties
  assert metrics.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_hand_values():
  assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
  assert metrics.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
  assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_gauc_weights_groups_by_impressions_and_skips_one_class_groups():
  y = [1, 0, 0, 1, 0, 1, 1]
  s = [0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4]
  g = [1, 1, 2, 2, 2, 3, 3]        # group 3 has only positives: skipped
  want = (1.0 * 2 + 0.0 * 3) / 5
  assert metrics.gauc(y, s, g) == pytest.approx(want)


def test_gauc_brute_force_random():
  rng = np.random.default_rng(4)
  y = rng.random(300) < 0.4
  s = rng.random(300)
  g = rng.integers(0, 12, 300)
  num = den = 0.0
  for grp in np.unique(g):
    m = g == grp
    if y[m].all() or not y[m].any():
      continue
    num += brute_auc(y[m], s[m]) * m.sum()
    den += m.sum()
  assert metrics.gauc(y, s, g) == pytest.approx(num / den)


def test_logloss():
  assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
