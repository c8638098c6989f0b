"""Request batching across concurrent calls: a bounded queue drained by batch threads.

Requests for the same servable, signature and per-row input shapes are concatenated
along the batch dimension (up to ``max_batch_size`` rows), run as one session call,
and the outputs split back per request. At most ``num_threads`` session calls run at
once. A batch thread takes the oldest request and then every compatible request already
queued; with ``batch_timeout_s > 0`` it also waits up to that long for more rows. With
the default timeout of 0 batching is opportunistic: a request that finds the queue
empty and a free slot runs at once on its own handler thread (no thread hand-off), and
requests that arrive while all slots are busy are merged when a slot frees up. A merged batch that fails with INVALID_ARGUMENT is re-run one
request at a time so one bad request cannot fail its neighbours.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Optional

import grpc
import numpy as np

from ssr_tf.serving.servable import Servable, Signature
from ssr_tf.serving.tensors import ServingError

log = logging.getLogger("ssr_tf.serving")


class _Task:
  __slots__ = ("servable", "sig", "feeds", "rows", "key", "future", "deadline")

  def __init__(self, servable: Servable, sig: Signature, feeds: dict[str, np.ndarray],
               rows: int, deadline: Optional[float]):
    self.servable, self.sig, self.feeds, self.rows = servable, sig, feeds, rows
    self.key = (id(servable), sig.name,
                tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(feeds.items())))
    self.future: concurrent.futures.Future = concurrent.futures.Future()
    self.deadline = deadline


class BatchStats:
  """Counters for logs and tests: batches run, requests and rows in them."""

  def __init__(self):
    self.batches = 0
    self.requests = 0
    self.rows = 0
    self.max_requests_in_batch = 0


class Batcher:
  """Bounded request queue + batch threads.

  Args:
    max_batch_size: most rows in one merged session call (a larger single request runs
      alone).
    batch_timeout_s: how long a batch thread waits for more rows after the first request.
    max_queued_requests: queue bound; beyond it submit() fails with UNAVAILABLE.
    num_threads: batch threads (concurrent session calls).
  """

  def __init__(self, max_batch_size: int = 1024, batch_timeout_s: float = 0.0,
               max_queued_requests: int = 1024, num_threads: int = 2):
    if max_batch_size < 1 or num_threads < 1 or max_queued_requests < 1:
      raise ValueError("max_batch_size, num_threads and max_queued_requests must be >= 1")
    self.max_batch_size, self.batch_timeout_s = max_batch_size, batch_timeout_s
    self.max_queued_requests = max_queued_requests
    self._queue: collections.deque[_Task] = collections.deque()
    self._cond = threading.Condition()
    self._stopping = False
    self._running = 0               # session calls in progress (<= num_threads)
    self.num_threads = num_threads
    self.stats = BatchStats()
    self._threads = [threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
                     for i in range(num_threads)]
    for t in self._threads:
      t.start()

  def submit(self, servable: Servable, sig: Signature, feeds: dict[str, np.ndarray],
             rows: int, deadline: Optional[float] = None) -> concurrent.futures.Future:
    """Queues one validated request; its future yields {output: array} for its rows."""
    task = _Task(servable, sig, feeds, rows, deadline)
    with self._cond:
      if self._stopping:
        raise ServingError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
      inline = (self.batch_timeout_s <= 0 and not self._queue
                and self._running < self.num_threads)
      if inline:
        self._running += 1
      else:
        if len(self._queue) >= self.max_queued_requests:
          raise ServingError(grpc.StatusCode.UNAVAILABLE,
                             f"batch queue is full ({self.max_queued_requests} requests); "
                             "retry")
        self._queue.append(task)
        self._cond.notify_all()
    if inline:
      try:
        self._run_safely([task])
      finally:
        self._release_slot()
    return task.future

  def run(self, servable: Servable, sig: Signature, feeds: dict[str, np.ndarray], rows: int,
          deadline: Optional[float] = None) -> dict[str, np.ndarray]:
    """Runs one validated request and returns {output: array} for its rows.

    With a free slot, an empty queue and no batch timeout the session call runs at once on
    the calling thread (no task, future or hand-off); otherwise the request is queued and
    this waits for its batch (DEADLINE_EXCEEDED once `deadline` passes).
    """
    with self._cond:
      inline = (self.batch_timeout_s <= 0 and not self._queue and not self._stopping
                and self._running < self.num_threads)
      if inline:
        self._running += 1
        st = self.stats
        st.batches += 1
        st.requests += 1
        st.rows += rows
        st.max_requests_in_batch = max(st.max_requests_in_batch, 1)
    if inline:
      try:
        if deadline is not None and time.monotonic() > deadline:
          raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while queued")
        return servable.run(sig, feeds)
      finally:
        self._release_slot()
    future = self.submit(servable, sig, feeds, rows, deadline)
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
      return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
      raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                         "deadline exceeded before the model finished") from None

  def _release_slot(self) -> None:
    with self._cond:
      self._running -= 1
      if self._queue:
        self._cond.notify_all()

  def stop(self, timeout_s: float = 30.0) -> None:
    """Runs what is queued, then stops the batch threads."""
    with self._cond:
      self._stopping = True
      self._cond.notify_all()   # queued requests still run before the threads exit
    for t in self._threads:
      t.join(timeout=timeout_s)

  # -- batch threads -------------------------------------------------------------------
  def _take(self) -> Optional[list[_Task]]:
    with self._cond:
      while not self._queue or self._running >= self.num_threads:
        if self._stopping and not self._queue:
          return None
        self._cond.wait()
      self._running += 1
      first = self._queue.popleft()
      batch, rows = [first], first.rows
      until = time.monotonic() + self.batch_timeout_s
      while True:
        q = self._queue
        while q and q[0].key == first.key and rows + q[0].rows <= self.max_batch_size:
          task = q.popleft()
          batch.append(task)
          rows += task.rows
        blocked = bool(q)          # the head does not fit: run what we have
        left = until - time.monotonic()
        if blocked or rows >= self.max_batch_size or left <= 0 or self._stopping:
          return batch
        self._cond.wait(left)

  def _loop(self) -> None:
    while True:
      batch = self._take()
      if batch is None:
        return
      try:
        self._run_safely(batch)
      finally:
        self._release_slot()

  def _run_safely(self, batch: list[_Task]) -> None:
    try:
      self._run(batch)
    except Exception as e:   # every future gets an answer, whatever happens
      log.exception("batch failed")
      for t in batch:
        if not t.future.done():
          t.future.set_exception(ServingError(grpc.StatusCode.INTERNAL, f"batch failed: {e}"))

  def _run(self, batch: list[_Task]) -> None:
    now = time.monotonic()
    live = []
    for t in batch:
      if t.deadline is not None and now > t.deadline:
        t.future.set_exception(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                            "deadline passed while queued"))
      elif t.future.set_running_or_notify_cancel():
        live.append(t)
    if not live:
      return
    with self._cond:
      st = self.stats
      st.batches += 1
      st.requests += len(live)
      st.rows += sum(t.rows for t in live)
      st.max_requests_in_batch = max(st.max_requests_in_batch, len(live))
    if len(live) == 1:
      self._run_one(live[0])
      return
    first = live[0]
    feeds = {n: np.concatenate([t.feeds[n] for t in live]) for n in first.feeds}
    try:
      out = first.servable.run(first.sig, feeds)
    except ServingError as e:
      if e.code != grpc.StatusCode.INVALID_ARGUMENT:
        for t in live:
          t.future.set_exception(e)
        return
      for t in live:              # find the bad request(s): run each alone
        self._run_one(t)
      return
    start = 0
    for t in live:
      end = start + t.rows
      t.future.set_result({k: v[start:end] for k, v in out.items()})
      start = end

  @staticmethod
  def _run_one(t: _Task) -> None:
    try:
      t.future.set_result(t.servable.run(t.sig, t.feeds))
    except ServingError as e:
      t.future.set_exception(e)
