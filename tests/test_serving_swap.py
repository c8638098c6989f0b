"""Version swaps under load: no request lost, loading off the request path."""
import os
import shutil
import threading

import ssr_tf  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf

from ssr_tf.serving import bench
from ssr_tf.serving.manager import run_niced
from ssr_tf.serving.process import ServerProcess
from ssr_tf.serving.servable import Servable
from ssr_tf.serving.toy_model import build_toy_model, toy_examples


def test_run_niced_lowers_only_its_own_thread():
  me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
  seen = run_niced(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), 5)
  assert seen == min(me + 5, 19)
  assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me
  with pytest.raises(ValueError, match="boom"):
    run_niced(lambda: (_ for _ in ()).throw(ValueError("boom")), 5)


def test_servable_matches_the_savedmodel_and_builds_no_python_ops(tmp_path):
  path = build_toy_model(str(tmp_path), 1, seed=3)
  s = Servable("ssr", 1, path, 1, -1)
  examples = toy_examples(7, seed=2)
  got = s.run(s.signature(""), {"examples": np.array(examples, dtype=object)})
  want = tf.saved_model.load(path).signatures["serving_default"](examples=tf.constant(examples))
  for name in ("click_prob", "pay_prob"):
    np.testing.assert_allclose(got[name], want[name].numpy(), rtol=1e-6)
  # the graph lives in C only: loading built no Python Operation per node
  assert not s._graph.get_operations()  # pylint: disable=protected-access
  s.close()


@pytest.mark.slow
def test_swap_under_load_loses_no_request(tmp_path):
  base = str(tmp_path / "models")
  build_toy_model(base, 1, seed=0)
  staging = str(tmp_path / "staging")
  staged = [build_toy_model(staging, 2 + i, seed=1 + i) for i in range(2)]
  pool = toy_examples(64, seed=5)
  requests = bench._requests(pool, 32, "ssr")  # pylint: disable=protected-access

  def publish(i: int) -> int:
    version = 2 + i
    shutil.move(staged[i], os.path.join(base, str(version)))
    return version

  with ServerProcess(base, ["--file_system_poll_wait_seconds=0.1"]) as srv:
    result = bench.run_swap(srv.target, requests, 32, 4, publish, swaps=2, window_s=2.0)
    log = srv.log()
  assert result["errors"] == 0, result["error_codes"]
  served = result["served_versions"]
  assert served.get("1", 0) > 0 and served.get("2", 0) > 0 and served.get("3", 0) > 0, served
  for swap in result["per_swap"]:
    assert swap["swap_requests"] > 0 and swap["steady_requests"] > 0
    assert swap["seconds_to_first_new_response"] is not None
  assert "Successfully loaded servable version {name: ssr version: 3}" in log
  assert "Done unloading servable version {name: ssr version: 2}" in log
