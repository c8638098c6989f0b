"""AUC / GAUC / LogLoss / NE / calibration against brute force and hand values; the evaluate
table."""
import itertools

import numpy as np
import pytest

from ssr_tf import evaluation, metrics


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


def test_normalized_entropy_against_the_base_rate():
  y = np.array([1, 0, 0, 0])
  base = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  # predicting the observed rate everywhere scores exactly 1; a better model below 1
  assert metrics.normalized_entropy(y, np.full(4, 0.25)) == pytest.approx(1.0)
  p = np.array([0.7, 0.1, 0.2, 0.1])
  assert metrics.normalized_entropy(y, p) == pytest.approx(metrics.logloss(y, p) / base)
  assert metrics.normalized_entropy(y, p) < 1.0
  assert np.isnan(metrics.normalized_entropy([0, 0], [0.1, 0.2]))
  assert np.isnan(metrics.normalized_entropy([1, 1], [0.1, 0.2]))


def test_calibration_is_expected_over_observed_positives():
  assert metrics.calibration([1, 0, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(1.0)
  assert metrics.calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
  assert metrics.calibration([1, 0, 1, 1], [0.3, 0.0, 0.3, 0.3]) == pytest.approx(0.3)
  assert np.isnan(metrics.calibration([0, 0], [0.1, 0.2]))
  # the true probabilities are calibrated in expectation
  rng = np.random.default_rng(0)
  p = rng.random(200_000) * 0.4
  assert metrics.calibration(rng.random(p.size) < p, p) == pytest.approx(1.0, abs=0.01)


def test_evaluate_scores_model_and_oracle_and_tabulates_them():
  rng = np.random.default_rng(1)
  oracle = rng.random(2000) * 0.5
  y = (rng.random(2000) < oracle).astype(np.float32)
  model = np.clip(oracle + rng.normal(0, 0.1, 2000), 0.01, 0.99)
  arrays = {"label_click": y, "click_prob": model, "oracle_click": oracle,
            "group": rng.integers(0, 20, 2000)}
  r = evaluation.score(arrays, has_group=True)["click"]
  assert r["auc"] == pytest.approx(metrics.auc(y, model))
  assert r["ne"] == pytest.approx(metrics.normalized_entropy(y, model))
  assert r["oracle_calibration"] == pytest.approx(metrics.calibration(y, oracle))
  assert r["oracle_auc"] > r["auc"] and r["oracle_ne"] < r["ne"] < 1.0
  assert r["rows"] == 2000 and r["positives"] == int(y.sum())
  table = evaluation.format_table({"tasks": {"click": r}}).splitlines()
  assert table[0].split() == ["metric", "click", "oracle"]
  rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
  assert list(rows) == ["auc", "gauc", "logloss", "ne", "calibration", "rows", "positives"]
  assert rows["ne"] == [f"{r['ne']:.4f}", f"{r['oracle_ne']:.4f}"]
  assert rows["rows"] == ["2000"]                    # the oracle column has no counts
  # no oracle, no groups: one column, no gauc row
  plain = evaluation.score({"label_click": y, "click_prob": model}, has_group=False)
  table = evaluation.format_table({"tasks": plain}).splitlines()
  assert table[0].split() == ["metric", "click"] and not any(l.startswith("gauc") for l in table)


def brute_placements(y, s):
  """V10 / V01 straight from the definition, pair by pair."""
  y = np.asarray(y, bool)
  s = np.asarray(s, float)
  pos, neg = s[y], s[~y]
  def psi(a, b):
    return 1.0 if a > b else 0.5 if a == b else 0.0
  v10 = np.array([np.mean([psi(p, n) for n in neg]) for p in pos])
  v01 = np.array([np.mean([psi(p, n) for p in pos]) for n in neg])
  return v10, v01


@pytest.mark.parametrize("seed", range(3))
def test_delong_placements_match_pairwise_definition_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = rng.random(150) < 0.3
  s = np.round(rng.random(150) * 8) / 8                # heavy ties
  v10, v01 = metrics.placements(y, s)
  b10, b01 = brute_placements(y, s)
  np.testing.assert_allclose(v10, b10, atol=1e-12)
  np.testing.assert_allclose(v01, b01, atol=1e-12)
  assert v10.mean() == pytest.approx(metrics.auc(y, s), abs=1e-12)
  assert v01.mean() == pytest.approx(metrics.auc(y, s), abs=1e-12)


def test_delong_variance_matches_its_definition():
  rng = np.random.default_rng(7)
  y = rng.random(120) < 0.4
  a = y + rng.normal(0, 1.0, 120)
  b = y + rng.normal(0, 1.5, 120)
  r = metrics.delong_test(y, a, b)
  (a10, a01), (b10, b01) = brute_placements(y, a), brute_placements(y, b)
  m, n = len(a10), len(a01)
  s10 = np.cov(np.stack([a10, b10]))              # 2 x 2, ddof 1
  s01 = np.cov(np.stack([a01, b01]))
  var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
  assert r["se"] == pytest.approx(np.sqrt(var), rel=1e-10)
  assert r["diff"] == pytest.approx(metrics.auc(y, a) - metrics.auc(y, b), abs=1e-12)
  assert r["z"] == pytest.approx(r["diff"] / r["se"])


def test_delong_identical_swapped_and_clear_cases():
  rng = np.random.default_rng(1)
  y = rng.random(400) < 0.3
  good, noise = y + rng.normal(0, 0.5, 400), rng.random(400)
  same = metrics.delong_test(y, good, good * 2 + 1)    # same ranking: no difference at all
  assert same["diff"] == 0 and same["se"] == 0 and same["p_value"] == 1.0
  ab, ba = metrics.delong_test(y, good, noise), metrics.delong_test(y, noise, good)
  assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["p_value"] == pytest.approx(ba["p_value"])
  assert ab["diff"] > 0.3 and ab["p_value"] < 1e-9
  assert np.isnan(metrics.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["p_value"])


def test_delong_is_calibrated_under_the_null():
  """Two equally good, correlated scorers: the SE matches the spread of the difference over
  repeated samples, and p < 0.05 about 5% of the time (measured with the variance scaled by
  2 or 1/2: 0.25% or 17% rejections, SE/spread 1.44 or 0.72)."""
  rng = np.random.default_rng(0)
  diffs, ses, rejections, reps = [], [], 0, 400
  for _ in range(reps):
    latent = rng.normal(0, 1, 300)
    y = rng.random(300) < 1 / (1 + np.exp(-latent))
    shared = rng.normal(0, 1, 300)
    a = latent + shared + rng.normal(0, 1, 300)
    b = latent + shared + rng.normal(0, 1, 300)
    r = metrics.delong_test(y, a, b)
    diffs.append(r["diff"])
    ses.append(r["se"])
    rejections += r["p_value"] < 0.05
  assert 0.85 < np.mean(ses) / np.std(diffs) < 1.15
  assert 0.02 <= rejections / reps <= 0.09


def test_slices_score_each_value_and_pool_the_rest():
  rng = np.random.default_rng(2)
  n = 3000
  slice_values = rng.choice(np.array([b"a", b"b", b"c", b"d"]), size=n, p=[0.4, 0.3, 0.2, 0.1])
  p = rng.random(n) * 0.6
  y = (rng.random(n) < p).astype(np.float32)
  arrays = {"label_click": y, "click_prob": p, "slice": slice_values}
  out = evaluation.score_slices(arrays, max_slices=2)
  assert [v["value"] for v in out] == ["a", "b", "(other)"]          # by frequency
  assert sum(v["rows"] for v in out) == n
  for v, rows in zip(out, [slice_values == b"a", slice_values == b"b",
                           np.isin(slice_values, [b"c", b"d"])]):
    assert v["rows"] == rows.sum() and v["click"]["positives"] == int(y[rows].sum())
    assert v["click"]["auc"] == pytest.approx(metrics.auc(y[rows], p[rows]))
    assert v["click"]["calibration"] == pytest.approx(metrics.calibration(y[rows], p[rows]))
  table = evaluation.format_slices({"by": "city", "values": out}).splitlines()
  assert table[0].split()[:3] == ["city", "rows", "click"] and table[3].startswith("(other)")
  # a slice with one class has no AUC: JSON null, "-" in the table
  arrays["label_click"] = np.where(slice_values == b"d", 0.0, y)
  out = evaluation.score_slices(arrays, max_slices=4)
  assert evaluation.json_safe(out)[3]["click"]["auc"] is None
