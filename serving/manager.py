"""Version management: serve the highest version under a base path, hot-swap new ones.

A poller lists ``<base_path>/<integer>/`` directories holding a ``saved_model.pb``. When
the highest one differs from the served version it is loaded *beside* the served one,
warmed up, and only then swapped in (an atomic reference change under a lock). Requests
hold a reference to the version they started on, so the old version finishes its
in-flight requests before its session is closed: no request fails during a swap.
This is TF Serving's availability-preserving policy with one aspired version.

A new version is warmed up on a thread of lower CPU priority (``load_nice``; Linux keeps
one nice value per thread), so its first session calls (graph optimisation, the warm-up
requests) take the cores only when requests leave them idle.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Optional, TypeVar

import grpc

from ssr_tf.serving.servable import Servable
from ssr_tf.serving.tensors import ServingError

log = logging.getLogger("ssr_tf.serving")

# States as in tensorflow.serving.ModelVersionStatus.State.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass
class VersionStatus:
  """What GetModelStatus reports for one version."""
  version: int
  state: str
  error_code: grpc.StatusCode = grpc.StatusCode.OK
  error_message: str = ""


def list_versions(base_path: str) -> dict[int, str]:
  """{version: dir} of complete SavedModel version directories under `base_path`."""
  try:
    names = os.listdir(base_path)
  except OSError:
    return {}
  found = {}
  for name in names:
    if not name.isdigit():
      continue
    path = os.path.join(base_path, name)
    if os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt")):
      found[int(name)] = path
  return found


def _fingerprint(path: str) -> tuple:
  """Newest mtime and file count under `path` (a failed load is retried when it changes)."""
  newest, count = 0.0, 0
  for root, _, files in os.walk(path):
    for f in files:
      try:
        newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
        count += 1
      except OSError:
        pass
  return newest, count


T = TypeVar("T")


def run_niced(fn: Callable[[], T], nice: int) -> T:
  """Runs `fn` on a new thread whose nice value is raised by `nice`, and returns its result
  (or raises its exception). Linux applies a thread's nice value to that thread only;
  elsewhere, or if the call is refused, `fn` runs at normal priority."""
  box: dict[str, object] = {}

  def body() -> None:
    if nice > 0:
      try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
      except (AttributeError, OSError):
        pass
    try:
      box["result"] = fn()
    except BaseException as e:  # re-raised on the caller's thread
      box["error"] = e

  t = threading.Thread(target=body, name="version-warmup", daemon=True)
  t.start()
  t.join()
  if "error" in box:
    raise box["error"]  # type: ignore[misc]
  return box["result"]  # type: ignore[return-value]


def _describe(name: str, version: int) -> str:
  return f"{{name: {name} version: {version}}}"


class ModelManager:
  """Loads, warms, swaps and unloads versions of one model.

  Args:
    name: the served model name (requests must use it).
    base_path: directory holding integer version subdirectories.
    load: builds a Servable from (version, path); may raise.
    warmup: runs warm-up requests on a freshly loaded Servable; may raise (load fails).
    poll_seconds: how often to look for new versions (<= 0: only at start).
    unload_timeout_s: longest wait for an old version's in-flight requests.
    load_nice: nice increment of the thread that warms up a version while another one is
      served (0 = same priority as requests).
  """

  def __init__(self, name: str, base_path: str, load: Callable[[int, str], Servable],
               warmup: Optional[Callable[[Servable], None]] = None, poll_seconds: float = 1.0,
               unload_timeout_s: float = 60.0, load_nice: int = 0):
    self.name, self.base_path = name, base_path
    self._load, self.warmup = load, warmup
    self.poll_seconds, self.unload_timeout_s = poll_seconds, unload_timeout_s
    self.load_nice = load_nice
    self._lock = threading.Lock()
    self._current: Optional[Servable] = None
    self._loaded: dict[int, Servable] = {}      # AVAILABLE or UNLOADING
    self._status: dict[int, VersionStatus] = {}
    self._failed: dict[int, tuple] = {}         # version -> fingerprint of the failed try
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._warned_empty = False

  # -- lifecycle -----------------------------------------------------------------------
  def start(self) -> None:
    """Loads the highest version now (if any), then polls in a background thread."""
    self.poll_once()
    if self.poll_seconds > 0:
      self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
      self._thread.start()

  def stop(self) -> None:
    """Stops polling and unloads every version (after their in-flight requests)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=self.unload_timeout_s + 5)
    with self._lock:
      servables = list(self._loaded.values())
      self._current = None
    for s in servables:
      self._unload(s)

  def _poll_loop(self) -> None:
    while not self._stop.wait(self.poll_seconds):
      try:
        self.poll_once()
      except Exception:   # never let the poller die: log and keep polling
        log.exception("version poll of %s failed", self.base_path)

  # -- polling / loading ---------------------------------------------------------------
  def poll_once(self) -> None:
    """One poll: load and swap in the highest version if it is not the one served."""
    versions = list_versions(self.base_path)
    if not versions:
      if not self._warned_empty:
        log.warning("No versions of servable %s found under base path %s", self.name,
                    self.base_path)
        self._warned_empty = True
      return
    self._warned_empty = False
    want = max(versions)
    current = self._current
    if current is not None and current.version == want:
      return
    fp = _fingerprint(versions[want])
    if self._failed.get(want) == fp:
      return                                   # failed before and unchanged on disk
    self._load_and_swap(want, versions[want], fp)

  def _load_and_swap(self, version: int, path: str, fp: tuple) -> None:
    with self._lock:
      self._status[version] = VersionStatus(version, LOADING)
    log.info("Loading servable version %s from %s", _describe(self.name, version), path)
    t0 = time.monotonic()
    servable = None
    try:
      servable = self._load(version, path)
      if self.warmup is not None:
        warmup, loaded = self.warmup, servable
        if self._current is not None and self.load_nice > 0:
          run_niced(lambda: warmup(loaded), self.load_nice)
        else:
          warmup(loaded)
    except Exception as e:   # a bad export must not take the server down
      if servable is not None:
        servable.close()
      self._failed[version] = fp
      msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
      with self._lock:
        self._status[version] = VersionStatus(version, END, grpc.StatusCode.UNKNOWN, msg)
      log.error("Loading servable version %s failed: %s (kept serving %s)",
                _describe(self.name, version), msg,
                self._current.version if self._current else "nothing")
      return
    self._failed.pop(version, None)
    with self._lock:
      old = self._current
      self._current = servable
      self._loaded[version] = servable
      self._status[version] = VersionStatus(version, AVAILABLE)
      if old is not None:
        self._status[old.version] = VersionStatus(old.version, UNLOADING)
    log.info("Successfully loaded servable version %s in %.2f s; now serving version %d%s",
             _describe(self.name, version), time.monotonic() - t0, version,
             f" (was {old.version})" if old is not None else "")
    if old is not None:
      self._unload(old)

  def _unload(self, servable: Servable) -> None:
    """Waits for `servable`'s in-flight requests, then closes its session."""
    deadline = time.monotonic() + self.unload_timeout_s
    with self._lock:
      self._status[servable.version] = VersionStatus(servable.version, UNLOADING)
    while True:
      with self._lock:
        refs = servable.refs
      if refs == 0 or time.monotonic() > deadline:
        break
      time.sleep(0.005)
    if refs:
      log.warning("Unloading %s with %d requests still in flight after %.0f s",
                  _describe(self.name, servable.version), refs, self.unload_timeout_s)
    with self._lock:
      self._loaded.pop(servable.version, None)
    servable.close()
    with self._lock:
      self._status[servable.version] = VersionStatus(servable.version, END)
    log.info("Done unloading servable version %s", _describe(self.name, servable.version))

  # -- request side --------------------------------------------------------------------
  def _check_name(self, name: str) -> None:
    if name != self.name:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Servable not found for request: model '{name}' (this server "
                         f"serves '{self.name}')")

  def acquire(self, name: str, version: Optional[int] = None) -> Servable:
    """The servable for a request (reference held until :meth:`release`)."""
    self._check_name(name)
    if self._stop.is_set():          # stop() unloads every version: retry elsewhere
      raise ServingError(grpc.StatusCode.UNAVAILABLE,
                         f"server is shutting down: model '{name}' is being unloaded")
    with self._lock:
      if version is None:
        s = self._current
        if s is None:
          raise ServingError(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: Latest({name}); no version is "
                             f"loaded yet from {self.base_path}")
      else:
        s = self._loaded.get(version)
        state = self._status.get(version)
        if s is None or state is None or state.state != AVAILABLE:
          raise ServingError(grpc.StatusCode.NOT_FOUND,
                             f"Servable not found for request: Specific({name}, {version}); "
                             f"available: {self.available_versions_locked()}")
      s.refs += 1
      return s

  def release(self, servable: Servable) -> None:
    with self._lock:
      servable.refs -= 1

  def available_versions_locked(self) -> list[int]:
    return sorted(v for v, st in self._status.items() if st.state == AVAILABLE)

  @property
  def current_version(self) -> Optional[int]:
    s = self._current
    return None if s is None else s.version

  def status(self, name: str, version: Optional[int] = None) -> list[VersionStatus]:
    """Version states for GetModelStatus (NOT_FOUND for an unknown model or version)."""
    self._check_name(name)
    with self._lock:
      table = dict(self._status)
    if version is not None:
      if version not in table:
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Could not find version {version} of model {name}")
      return [table[version]]
    if not table:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Could not find any versions of model {name} under {self.base_path}")
    return [table[v] for v in sorted(table, reverse=True)]
