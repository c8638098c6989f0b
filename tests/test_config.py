"""Typed config loading: unknown keys with suggestions, wrong types, overrides."""
import pytest

from ssr_tf.config import ExperimentConfig, load_config
from ssr_tf.errors import ConfigError
from ssr_tf.models import registry


def write(tmp_path, text):
  p = tmp_path / "c.yaml"
  p.write_text(text)
  return str(p)


def test_defaults_and_override(tmp_path):
  cfg = load_config(write(tmp_path, "train: {epochs: 2}\n"), ["model.backbone.num_views=4"])
  assert isinstance(cfg, ExperimentConfig)
  assert cfg.train.epochs == 2 and cfg.data.batch_size == 1024
  assert registry.backbone_config(cfg.model).num_views == 4


def test_unknown_key_suggests_closest(tmp_path):
  with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"):
    load_config(write(tmp_path, "train: {epoch: 2}\n"))


def test_unknown_backbone_key_names_path(tmp_path):
  with pytest.raises(ConfigError, match=r"model.backbone.num_view'.*'model.backbone.num_views'"):
    load_config(write(tmp_path, "model: {backbone: {num_view: 4}}\n"))


def test_wrong_type_names_path(tmp_path):
  with pytest.raises(ConfigError, match=r"'data.batch_size': expected an integer"):
    load_config(write(tmp_path, "data: {batch_size: big}\n"))
  with pytest.raises(ConfigError, match=r"'model.backbone.mode'"):
    load_config(write(tmp_path, "model: {backbone: {mode: sparse}}\n"))


def test_unknown_model_name(tmp_path):
  with pytest.raises(ConfigError, match=r"'model.name'.*unknown model 'ssrr'.*did you mean 'ssr'"):
    load_config(write(tmp_path, "model: {name: ssrr}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
  with pytest.raises(ConfigError, match="config file not found"):
    load_config(str(tmp_path / "nope.yaml"))
  with pytest.raises(ConfigError, match="not valid YAML"):
    load_config(write(tmp_path, "train: [\n"))


def test_bad_override():
  with pytest.raises(ConfigError, match="key.path=value"):
    load_config(None, ["train.epochs"])


def test_exponent_floats_without_a_dot(tmp_path):
  # PyYAML (YAML 1.1) reads 1e-4 as a string; a float key still takes it as the number,
  # in the file, in --set overrides, and in backbone settings.
  cfg = load_config(write(tmp_path, "model: {embedding_l2: 1e-4}\n"),
                    ["train.learning_rate=3E-3", "model.backbone.alpha_init=-2e+0"])
  assert cfg.model.embedding_l2 == 1e-4 and cfg.train.learning_rate == 3e-3
  assert registry.backbone_config(cfg.model).alpha_init == -2.0
  with pytest.raises(ConfigError, match=r"'model.embedding_l2': expected float, got '1e-4x'"):
    load_config(write(tmp_path, "model: {embedding_l2: 1e-4x}\n"))
  with pytest.raises(ConfigError, match=r"'model.embedding_l2': expected float, got 'nan'"):
    load_config(write(tmp_path, "model: {embedding_l2: 'nan'}\n"))


def test_override_value_not_yaml_names_the_key():
  # also a row of tests/test_faults.py (exit 2 through the CLI)
  with pytest.raises(ConfigError, match=r"override data\.batch_size: value '\[1' is not valid "
                     r"YAML \(expected ',' or '\]'"):
    load_config(None, ["data.batch_size=[1"])
  with pytest.raises(ConfigError, match=r"override train\.x: .*not valid YAML"):
    load_config(None, ["train.x=a: b: c"])


def test_docs_config_reference_is_current():
  """docs/config.md is generated from the dataclasses: a key added without `make docs` fails."""
  import importlib.util
  import pathlib
  repo = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("config_reference",
                                                repo / "scripts" / "config_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.main(["--check", str(repo / "docs" / "config.md")]) == 0
