"""Bad input through the CLI: one line naming the key/file/feature, exit code 2."""
import shutil
import subprocess
import sys

import pytest

from ssr_tf import cli
from conftest import experiment_yaml


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  err = capsys.readouterr().err
  return code, err


def assert_one_line(err):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith("ssr_tf: error: ")
  assert "Traceback" not in err


def test_unknown_key_suggests(capsys, make_config):
  cfg = make_config(train={"epoch": 1})
  code, err = run_cli(capsys, "train", "--config", str(cfg))
  assert code == 2
  assert_one_line(err)
  assert "train.epoch" in err and "did you mean 'train.epochs'" in err


def test_wrong_type(capsys, make_config):
  code, err = run_cli(capsys, "train", "--config", str(make_config(data={"batch_size": "x"})))
  assert code == 2 and "'data.batch_size': expected an integer" in err
  assert_one_line(err)


def test_missing_files(capsys, make_config, tmp_path):
  code, err = run_cli(capsys, "train", "--config", str(tmp_path / "none.yaml"))
  assert code == 2 and "config file not found" in err
  code, err = run_cli(capsys, "train", "--config",
                      str(make_config(data={"spec": str(tmp_path / "nospec.yaml")})))
  assert code == 2 and "feature spec not found" in err and "nospec.yaml" in err
  code, err = run_cli(capsys, "train", "--config",
                      str(make_config(data={"train": str(tmp_path / "x/*.tfrecord")})))
  assert code == 2 and "'data.train': no files match" in err
  assert_one_line(err)


def test_feature_absent_from_records(capsys, tmp_path, synth_dir):
  data = tmp_path / "data"
  shutil.copytree(synth_dir, data)
  spec = (data / "spec.yaml").read_text()
  (data / "spec.yaml").write_text(spec.replace("features:\n",
                                               "features:\n- {name: brand, num_buckets: 9}\n", 1))
  code, err = run_cli(capsys, "train", "--config", str(experiment_yaml(tmp_path, data)))
  assert code == 2 and "no column 'brand'" in err and "part-0000" in err
  assert_one_line(err)


def test_corrupt_shard_named(capsys, tmp_path, synth_dir):
  data = tmp_path / "data"
  shutil.copytree(synth_dir, data)
  shard = data / "train" / "part-00001.tfrecord"
  raw = shard.read_bytes()
  shard.write_bytes(raw[:len(raw) // 2] + b"\xff" * 64 + raw[len(raw) // 2 + 64:])
  code, err = run_cli(capsys, "train", "--config", str(experiment_yaml(tmp_path, data)))
  assert code == 2 and str(shard) in err and "corrupt" in err
  assert_one_line(err)


def test_empty_dataset(capsys, tmp_path, synth_dir):
  import tensorflow as tf
  empty = tmp_path / "empty"
  empty.mkdir()
  tf.io.TFRecordWriter(str(empty / "part-0.tfrecord")).close()
  cfg = experiment_yaml(tmp_path, synth_dir)
  code, err = run_cli(capsys, "train", "--config", str(cfg),
                      "--set", f"data.train={empty}/*.tfrecord")
  assert code == 2 and "'data.train'" in err and "hold no records" in err


def test_unknown_command(capsys):
  code, err = run_cli(capsys, "trian")
  assert code == 2 and "unknown command 'trian'" in err


def test_exit_code_from_the_real_binary(make_config):
  proc = subprocess.run([sys.executable, "-m", "ssr_tf", "train", "--config",
                         str(make_config(model={"name": "ssrr"}))],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "unknown model 'ssrr'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [
    ["compare", "--config", "{cfg}", "--against", "{cfg}", "--output", "{bad}/c.json"],
    ["score", "--saved_model", "{tmp}", "--input", "{cfg}", "--output", "{bad}/s.tsv"],
    ["bench", "serving", "--server", "127.0.0.1:1", "--output", "{bad}/b.json"],
])
def test_unwritable_output_is_named_before_any_work(capsys, make_config, tmp_path, argv):
  blocker = tmp_path / "blocker"
  blocker.write_text("a file where a folder should be\n")
  cfg = make_config()
  args = [a.format(cfg=cfg, tmp=tmp_path, bad=blocker) for a in argv]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert f"--output {blocker}" in err and "cannot create its folder" in err


@pytest.mark.parametrize("value", ["0", "1,x", "-4"])
def test_bad_warmup_batches_named(capsys, make_config, value):
  assert cli.main(["export", "--config", str(make_config()), "--output", "x",
                   "--warmup_batches", value]) == 2
  assert f"--warmup_batches {value!r}" in capsys.readouterr().err
