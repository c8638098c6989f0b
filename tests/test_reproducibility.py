"""Same config, same `train.seed`, `data.deterministic: true`: bit-identical weights."""
import json

from conftest import experiment_yaml

from ssr_tf import cli


def _train(tmp_path, synth_dir, name: str, seed: int, deterministic: bool = True) -> str:
  run = tmp_path / name
  run.mkdir()
  cfg = experiment_yaml(run, synth_dir, data={"deterministic": deterministic},
                        train={"seed": seed, "epochs": 2, "steps_per_epoch": 15,
                               "lr_decay": "cosine", "learning_rate": 0.003})
  assert cli.main(["train", "--config", str(cfg)]) == 0
  return json.loads((run / "model" / "train_state.json").read_text())["weights_sha256"]


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tmp_path, synth_dir):
  first = _train(tmp_path, synth_dir, "a", seed=3)
  assert _train(tmp_path, synth_dir, "b", seed=3) == first
  assert _train(tmp_path, synth_dir, "c", seed=4) != first
