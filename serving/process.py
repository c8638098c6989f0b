"""Run `ssr_tf serve` in a subprocess on free loopback ports (tests, benchmark).

``ServerProcess`` starts the server with ``--port 0 --port_file F``, waits (bounded) until
the port file appears and the model is AVAILABLE, and stops it with SIGTERM::

  with ServerProcess(base_path, ["--max_batch_size=256"]) as srv:
    RankingClient(srv.target).score_examples(...)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence


class ServerProcess:
  """A `ssr_tf serve` subprocess bound to 127.0.0.1.

  Args:
    base_path: --model_base_path.
    extra_args: more server flags.
    model_name: --model_name.
    rest: also serve REST on a free port.
    start_timeout_s: longest wait for the server to come up.
    log_path: where the server's stdout/stderr go (default: a temp file).
  """

  def __init__(self, base_path: str, extra_args: Sequence[str] = (), model_name: str = "ssr",
               rest: bool = False, start_timeout_s: float = 120.0, log_path: Optional[str] = None):
    self.base_path, self.model_name = base_path, model_name
    self.extra_args, self.rest, self.start_timeout_s = list(extra_args), rest, start_timeout_s
    self._tmp = tempfile.mkdtemp(prefix="ssr_serve_")
    self.port_file = os.path.join(self._tmp, "ports.json")
    self.log_path = log_path or os.path.join(self._tmp, "server.log")
    self.proc: Optional[subprocess.Popen] = None
    self.grpc_port = 0
    self.rest_port: Optional[int] = None
    self.returncode: Optional[int] = None

  @property
  def target(self) -> str:
    return f"127.0.0.1:{self.grpc_port}"

  def log(self) -> str:
    try:
      with open(self.log_path, errors="replace") as f:
        return f.read()
    except OSError:
      return ""

  def start(self) -> "ServerProcess":
    cmd = [sys.executable, "-m", "ssr_tf", "serve", "--model_base_path", self.base_path,
           "--model_name", self.model_name, "--host", "127.0.0.1", "--port", "0",
           "--port_file", self.port_file] + (["--rest_port", "0"] if self.rest else [])
    cmd += self.extra_args
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    self._log_file = open(self.log_path, "w")
    self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + self.start_timeout_s
    while not os.path.exists(self.port_file):
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
      if time.monotonic() > deadline:
        self.stop()
        raise TimeoutError(f"server not up after {self.start_timeout_s:.0f} s:\n"
                           f"{self.log()[-3000:]}")
      time.sleep(0.1)
    with open(self.port_file) as f:
      ports = json.load(f)
    self.grpc_port, self.rest_port = ports["grpc_port"], ports["rest_port"]
    return self

  def wait_available(self, timeout_s: float = 60.0) -> int:
    from ssr_tf.serving.client import RankingClient
    with RankingClient(self.target, self.model_name, timeout_s=5.0) as c:
      return c.wait_until_available(timeout_s)

  def terminate(self) -> None:
    """Sends SIGTERM (graceful drain) without waiting."""
    if self.proc is not None and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)

  def stop(self, timeout_s: float = 60.0) -> int:
    """SIGTERM, wait up to `timeout_s` (then SIGKILL); returns the exit code."""
    if self.proc is None:
      return 0
    self.terminate()
    try:
      self.returncode = self.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.returncode = self.proc.wait(timeout=10)
    self._log_file.close()
    return self.returncode

  def __enter__(self) -> "ServerProcess":
    self.start()
    self.wait_available()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()
