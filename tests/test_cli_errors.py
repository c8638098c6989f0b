"""Bad input through the CLI: one line naming the key/file/feature, exit code 2.

The cases (unknown key, wrong type, missing files, a feature the records lack, a corrupt
shard, an empty data set, an unknown command, unwritable outputs, bad --warmup_batches)
are rows of the table in tests/test_faults.py, run in-process through ``ssr_tf.cli.main``.
This file keeps the check that needs the real binary: its exit code.
"""
import subprocess
import sys


def test_exit_code_from_the_real_binary(make_config):
  proc = subprocess.run([sys.executable, "-m", "ssr_tf", "train", "--config",
                         str(make_config(model={"name": "ssrr"}))],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "unknown model 'ssrr'" in proc.stderr and "Traceback" not in proc.stderr
