"""Shared fixtures: a tiny synthetic data set and an experiment config pointing at it."""
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import ssr_tf  # noqa: E402,F401

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "public"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> pathlib.Path:
  """3,000 synthetic rows (train/valid/test shards, spec, vocab), written once per session."""
  from ssr_tf import synth
  out = tmp_path_factory.mktemp("synth")
  synth.write(synth.SynthConfig(rows=3000, seed=3, shards=2, noise_fields=3), str(out))
  return out


def experiment_yaml(tmp_path: pathlib.Path, data_dir: pathlib.Path, **sections) -> pathlib.Path:
  """Writes a small experiment config over `data_dir`; `sections` override top-level keys."""
  import yaml
  cfg = {
      "data": {"spec": str(data_dir / "spec.yaml"), "train": str(data_dir / "train/*"),
               "valid": str(data_dir / "valid/*"), "test": str(data_dir / "test/*"),
               "batch_size": 256, "deterministic": True},
      "model": {"name": "ssr", "embedding_dim": 8,
                "backbone": {"mode": "dynamic", "num_layers": 2, "num_views": 4,
                             "view_dim": 8, "impl": "tf"}},
      "train": {"model_dir": str(tmp_path / "model"), "epochs": 1, "verbose": 0},
  }
  for key, value in sections.items():
    cfg[key] = {**cfg.get(key, {}), **value}
  path = tmp_path / "experiment.yaml"
  path.write_text(yaml.safe_dump(cfg))
  return path


@pytest.fixture
def make_config(tmp_path, synth_dir):
  def make(**sections):
    return experiment_yaml(tmp_path, synth_dir, **sections)
  return make
