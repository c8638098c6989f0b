"""`train.seed` reaches SSR's initial weights: views' W_proj and V, SSR-S index draws and the
memories' values; an explicit `model.backbone.seed` still wins."""
import numpy as np
import pytest

from conftest import experiment_yaml

from ssr_tf import task
from ssr_tf.config import load_config

SSR_S = {"mode": "static", "num_layers": 1, "num_views": 4, "view_dim": 8, "impl": "tf"}
SSR_D = {"mode": "dynamic", "num_layers": 2, "num_views": 4, "view_dim": 8, "impl": "tf"}
MSN = {**SSR_D, "memories": [{"after_layer": 0, "num_sub_keys": 4, "top_k": 2, "key_dim": 8,
                              "value_dim": 8}]}


def _weights(tmp_path, synth_dir, name: str, backbone: dict, seed: int) -> dict:
  run = tmp_path / f"{name}_{seed}_{len(list(tmp_path.iterdir()))}"
  run.mkdir()
  cfg = load_config(str(experiment_yaml(run, synth_dir, train={"seed": seed},
                                        model={"name": name, "embedding_dim": 8,
                                               "backbone": backbone})))
  _, model = task.build(cfg)
  return {v.name: v.numpy() for v in model.backbone.weights}


@pytest.mark.parametrize("name,backbone", [("ssr", SSR_D), ("ssr", SSR_S), ("ssr_msn", MSN)],
                         ids=["ssr_d", "ssr_s", "ssr_msn"])
def test_train_seed_sets_the_backbone_initialisation(tmp_path, synth_dir, name, backbone):
  a = _weights(tmp_path, synth_dir, name, backbone, seed=1)
  again = _weights(tmp_path, synth_dir, name, backbone, seed=1)
  b = _weights(tmp_path, synth_dir, name, backbone, seed=2)
  assert a.keys() == again.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], again[k], err_msg=k)
  seeded = [k for k in a if any(s in k for s in ("kernel", "indices", "values"))
            and np.ptp(a[k]) > 0]                  # random ones (not zero- or ones-filled)
  assert seeded, sorted(a)
  for k in seeded:
    assert not np.array_equal(a[k], b[k]), f"{k} does not depend on train.seed"


def test_explicit_backbone_seed_wins_over_train_seed(tmp_path, synth_dir):
  fixed = {**SSR_D, "seed": 7}
  a = _weights(tmp_path, synth_dir, "ssr", fixed, seed=1)
  b = _weights(tmp_path, synth_dir, "ssr", fixed, seed=2)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
