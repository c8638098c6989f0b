"""The request batcher on a fake servable: merging, splitting, isolation, bounds."""
import threading
import time
import types

import grpc
import numpy as np
import pytest

from ssr_tf.serving.batching import Batcher
from ssr_tf.serving.tensors import ServingError


class FakeServable:
  """y = 2 * x; negative x is a bad input; records the rows of every call."""

  def __init__(self, delay_s: float = 0.0):
    self.calls: list[int] = []
    self.delay_s = delay_s
    self.gate = threading.Event()
    self.gate.set()

  def run(self, sig, feeds, outputs=None):
    self.gate.wait(10)
    self.calls.append(len(feeds["x"]))
    time.sleep(self.delay_s)
    if np.any(feeds["x"] < 0):
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "input 'x': negative")
    return {"y": feeds["x"] * 2}


SIG = types.SimpleNamespace(name="serving_default")


def _submit(b, s, values):
  x = np.asarray(values, dtype=np.int64)
  return b.submit(s, SIG, {"x": x}, len(x))


def test_idle_request_runs_inline_and_alone():
  b = Batcher(max_batch_size=64, num_threads=1)
  s = FakeServable()
  assert _submit(b, s, [1, 2, 3]).result(1)["y"].tolist() == [2, 4, 6]
  assert s.calls == [3]
  b.stop()


def test_queued_requests_merge_and_split_back():
  b = Batcher(max_batch_size=10, num_threads=1)
  s = FakeServable()
  s.gate.clear()                                   # hold the first call: others queue up
  first = threading.Thread(target=lambda: _submit(b, s, [0]))
  first.start()
  time.sleep(0.05)
  futs = [_submit(b, s, [i] * 3) for i in range(1, 5)]   # 4 x 3 rows, max 10 per batch
  s.gate.set()
  first.join(5)
  got = [f.result(5)["y"].tolist() for f in futs]
  assert got == [[2 * i] * 3 for i in range(1, 5)]
  assert s.calls == [1, 9, 3]                      # 3 requests merged (9 rows), then 1
  assert b.stats.max_requests_in_batch == 3
  b.stop()


def test_bad_request_does_not_fail_its_batch_neighbours():
  b = Batcher(max_batch_size=100, batch_timeout_s=0.2, num_threads=1)
  s = FakeServable()
  futs = [_submit(b, s, v) for v in ([1], [-1, 5], [2])]
  assert futs[0].result(5)["y"].tolist() == [2]
  assert futs[2].result(5)["y"].tolist() == [4]
  with pytest.raises(ServingError) as info:
    futs[1].result(5)
  assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert s.calls[0] == 4                           # one merged try, then one by one
  b.stop()


def test_bounded_queue_and_stop():
  b = Batcher(max_batch_size=4, max_queued_requests=2, num_threads=1)
  s = FakeServable()
  s.gate.clear()
  threading.Thread(target=lambda: _submit(b, s, [1])).start()
  time.sleep(0.05)
  queued = [_submit(b, s, [2]), _submit(b, s, [3])]
  with pytest.raises(ServingError) as info:
    _submit(b, s, [4])
  assert info.value.code == grpc.StatusCode.UNAVAILABLE
  s.gate.set()
  b.stop()                                         # drains what was queued
  assert [f.result(1)["y"].tolist() for f in queued] == [[4], [6]]
  with pytest.raises(ServingError, match="shutting down"):
    _submit(b, s, [5])


def test_expired_deadline_is_not_run():
  b = Batcher(max_batch_size=4, batch_timeout_s=0.1, num_threads=1)
  s = FakeServable()
  x = np.array([1])
  fut = b.submit(s, SIG, {"x": x}, 1, deadline=time.monotonic() - 1)
  with pytest.raises(ServingError) as info:
    fut.result(5)
  assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and s.calls == []
  b.stop()
