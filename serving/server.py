"""`ssr_tf serve`: a TF Serving protocol gRPC server (plus optional REST) for ssr_tf exports.

Implements ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata, Classify,
Regress) and ``tensorflow.serving.ModelService.GetModelStatus`` with the protos and stubs
of tensorflow-serving-api, so stock TF Serving clients work unchanged::

  ssr_tf serve --model_base_path /models/ssr --model_name ssr --port 8500 --rest_port 8501

Flags follow ``tensorflow_model_server`` where it has one (``--enable_batching``,
``--batch_timeout_micros``, ``--file_system_poll_wait_seconds``,
``--tensorflow_intra_op_parallelism``...). Boolean flags take ``true``/``false``.
SIGTERM / SIGINT drain: new calls are refused with UNAVAILABLE (REST: 503), in-flight ones
finish (up to ``--drain_seconds``), then the process exits 0.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

import ssr_tf  # noqa: F401  (TF log level / Keras 2 before TensorFlow loads)
import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ssr_tf.errors import UserError
from ssr_tf.serving.batching import Batcher
from ssr_tf.serving.core import ServingCore
from ssr_tf.serving.manager import ModelManager
from ssr_tf.serving.servable import Servable
from ssr_tf.serving.tensors import ServingError

log = logging.getLogger("ssr_tf.serving")


def _bool(text: str) -> bool:
  v = text.strip().lower()
  if v in ("1", "true", "yes", "on"):
    return True
  if v in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(prog: str) -> argparse.ArgumentParser:
  cores = os.cpu_count() or 2
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  g = p.add_argument_group("model")
  g.add_argument("--model_base_path", required=True,
                 help="directory of integer version subdirectories (SavedModels)")
  g.add_argument("--model_name", default="ssr", help="name clients put in ModelSpec.name")
  g.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                 help="how often to look for new versions (<= 0: only at start)")
  g.add_argument("--saved_model_tags", default="serve", help="comma-separated MetaGraph tags")
  g.add_argument("--enable_model_warmup", type=_bool, default=True,
                 help="warm a version up before it takes traffic")
  g.add_argument("--load_nice", type=int, default=10,
                 help="nice increment of the thread warming up a new version while another "
                      "one serves (Linux; 0 = same priority as requests)")
  g = p.add_argument_group("network")
  g.add_argument("--host", default="0.0.0.0", help="address to bind (127.0.0.1 for local only)")
  g.add_argument("--port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
  g.add_argument("--rest_port", "--rest_api_port", dest="rest_port", type=int, default=None,
                 help="REST port (omit to disable; 0 = pick a free one)")
  g.add_argument("--port_file", default="",
                 help="once serving, write {grpc_port, rest_port, pid} JSON here")
  g.add_argument("--grpc_max_threads", type=int, default=32, help="gRPC handler threads")
  g.add_argument("--max_concurrent_rpcs", type=int, default=1024,
                 help="RPCs beyond this are refused with RESOURCE_EXHAUSTED")
  g.add_argument("--max_message_bytes", type=int, default=64 << 20,
                 help="largest request (bytes); larger gets RESOURCE_EXHAUSTED")
  g.add_argument("--max_request_rows", type=int, default=8192,
                 help="most rows (candidates) in one request; more gets RESOURCE_EXHAUSTED")
  g.add_argument("--rest_request_timeout_seconds", type=float, default=30.0)
  g = p.add_argument_group("batching")
  g.add_argument("--enable_batching", type=_bool, default=True,
                 help="merge concurrent requests into one session call")
  g.add_argument("--max_batch_size", type=int, default=256, help="rows in a merged batch")
  g.add_argument("--batch_timeout_micros", type=int, default=0,
                 help="extra wait for more rows after the first request (0 = opportunistic)")
  g.add_argument("--max_queued_requests", type=int, default=1024,
                 help="batch queue bound; beyond it requests get UNAVAILABLE")
  g.add_argument("--num_batch_threads", type=int, default=min(cores, 4),
                 help="concurrent session calls")
  g = p.add_argument_group("runtime")
  # One session call per core, run on the request's own thread: on a small box this serves
  # more requests (and a steadier p99) than letting every call spread over all cores, and
  # no thread hand-off to a TF pool sits on the request path.
  g.add_argument("--tensorflow_intra_op_parallelism", type=int, default=1,
                 help="threads inside one op (0 = TF default: all cores)")
  g.add_argument("--tensorflow_inter_op_parallelism", type=int, default=-1,
                 help="ops of one call run in parallel (0 = TF default: all cores; negative: "
                      "a call's ops run one by one on the request thread)")
  g.add_argument("--drain_seconds", type=float, default=30.0,
                 help="on SIGTERM, longest wait for in-flight requests")
  g.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
  return p


class DrainGate:
  """Counts the calls in flight; once closed (draining), refuses new ones.

  gRPC's own shutdown cancels the calls that reach the server after it began (the client
  sees CANCELLED, which retry policies do not retry), so draining happens here first:
  calls that arrive after :meth:`close` get UNAVAILABLE, the others finish."""

  def __init__(self):
    self._cv = threading.Condition()
    self.closed = False
    self.in_flight = 0

  def enter(self) -> bool:
    """Counts a new call in; False (not counted) once draining."""
    with self._cv:
      if self.closed:
        return False
      self.in_flight += 1
      return True

  def leave(self) -> None:
    with self._cv:
      self.in_flight -= 1
      self._cv.notify_all()

  def close(self) -> None:
    with self._cv:
      self.closed = True

  def wait_idle(self, timeout_s: float) -> int:
    """Waits until no call is in flight (or `timeout_s`); returns how many remain."""
    with self._cv:
      self._cv.wait_for(lambda: self.in_flight == 0, timeout=max(timeout_s, 0.0))
      return self.in_flight


DRAINING = "server is draining (shutting down); retry on another replica"


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService over a ServingCore."""

  def __init__(self, core: ServingCore, gate: Optional[DrainGate] = None):
    self.core, self.gate = core, gate

  def Predict(self, request, context):  # noqa: N802 (gRPC method names)
    return _call(context, lambda d: self.core.predict(request, d), self.gate)

  def Classify(self, request, context):  # noqa: N802
    return _call(context, lambda d: self.core.classify(request, d), self.gate)

  def Regress(self, request, context):  # noqa: N802
    return _call(context, lambda d: self.core.regress(request, d), self.gate)

  def GetModelMetadata(self, request, context):  # noqa: N802
    return _call(context, lambda d: self.core.metadata(request), self.gate)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """tensorflow.serving.ModelService.GetModelStatus (HandleReloadConfigRequest: UNIMPLEMENTED)."""

  def __init__(self, core: ServingCore, gate: Optional[DrainGate] = None):
    self.core, self.gate = core, gate

  def GetModelStatus(self, request, context):  # noqa: N802
    return _call(context, lambda d: self.core.status(request), self.gate)


def _call(context: grpc.ServicerContext, fn: Callable[[Optional[float]], object],
          gate: Optional[DrainGate] = None):
  """Runs `fn(deadline)`; ServingError -> its status code, anything else -> INTERNAL;
  UNAVAILABLE once `gate` is draining."""
  if gate is not None and not gate.enter():
    context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
  remaining = context.time_remaining()
  # No client deadline shows up as None or as a huge number of seconds.
  deadline = None if remaining is None or remaining > 1e6 else time.monotonic() + remaining
  try:
    return fn(deadline)
  except ServingError as e:
    context.abort(e.code, e.message)
  except Exception as e:   # the server never dies on a request
    log.exception("request failed")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
  finally:
    if gate is not None:
      gate.leave()


class ModelServer:
  """The running server: manager + batcher + gRPC (+ REST). start() / stop()."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    tags = [t for t in args.saved_model_tags.split(",") if t]

    def load(version: int, path: str) -> Servable:
      return Servable(args.model_name, version, path, args.tensorflow_intra_op_parallelism,
                      args.tensorflow_inter_op_parallelism, tags)

    self.batcher = None
    if args.enable_batching:
      self.batcher = Batcher(args.max_batch_size, args.batch_timeout_micros / 1e6,
                             args.max_queued_requests, args.num_batch_threads)
    self.manager = ModelManager(args.model_name, args.model_base_path, load,
                                poll_seconds=args.file_system_poll_wait_seconds,
                                unload_timeout_s=max(args.drain_seconds, 1.0),
                                load_nice=max(args.load_nice, 0))
    self.core = ServingCore(self.manager, self.batcher, args.max_request_rows)
    if args.enable_model_warmup:
      self.manager.warmup = self.core.warmup
    self.gate = DrainGate()
    self.grpc_server: Optional[grpc.Server] = None
    self.http = None
    self.rest_front = None
    self.grpc_port = 0
    self.rest_port: Optional[int] = None

  def start(self) -> None:
    a = self.args
    self.manager.start()
    # Everything alive now (TensorFlow's modules, the first version) stays: keep it out of
    # the cyclic garbage collector, whose full passes would otherwise scan it all while
    # holding the GIL (tens of ms with every request thread stopped).
    gc.collect()
    gc.freeze()
    opts = [("grpc.max_receive_message_length", a.max_message_bytes),
            ("grpc.max_send_message_length", a.max_message_bytes),
            ("grpc.so_reuseport", 0)]
    self.grpc_server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=a.grpc_max_threads,
                                              thread_name_prefix="grpc"),
        options=opts, maximum_concurrent_rpcs=a.max_concurrent_rpcs)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(self.core, self.gate), self.grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(self.core, self.gate), self.grpc_server)
    try:
      self.grpc_port = self.grpc_server.add_insecure_port(f"{a.host}:{a.port}")
    except RuntimeError as e:
      raise UserError(f"cannot bind gRPC to {a.host}:{a.port}: {e}") from None
    if not self.grpc_port:
      raise UserError(f"cannot bind gRPC to {a.host}:{a.port} (in use?)")
    self.grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d (model %s from %s)", a.host, self.grpc_port,
             a.model_name, a.model_base_path)
    if a.rest_port is not None:
      from ssr_tf.serving import rest
      self.rest_front = rest.RestFrontEnd(self.core, a.max_message_bytes,
                                          a.rest_request_timeout_seconds)
      try:
        self.http = rest.make_http_server(self.rest_front, a.host, a.rest_port)
      except OSError as e:
        raise UserError(f"cannot bind REST to {a.host}:{a.rest_port}: {e}") from None
      self.rest_port = self.http.server_address[1]
      threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.2},
                       name="rest", daemon=True).start()
      log.info("Exporting HTTP/REST API at %s:%d", a.host, self.rest_port)
    if a.port_file:
      tmp = a.port_file + ".tmp"
      with open(tmp, "w") as f:
        json.dump({"grpc_port": self.grpc_port, "rest_port": self.rest_port,
                   "pid": os.getpid()}, f)
      os.replace(tmp, a.port_file)

  def stop(self, stop_grpc: bool = True) -> None:
    """Graceful stop: refuse new calls (UNAVAILABLE / 503), finish in-flight ones, unload
    everything. `stop_grpc=False` leaves gRPC's listener open (still refusing every call)
    for a process that exits right after: gRPC's own shutdown would cancel the calls in
    transit (CANCELLED), a closed connection fails them with UNAVAILABLE."""
    a = self.args
    t0 = time.monotonic()
    log.info("Draining: refusing new requests, waiting up to %.0f s for in-flight ones",
             a.drain_seconds)
    self.gate.close()
    if self.rest_front is not None:
      self.rest_front.draining = True
    left = self.gate.wait_idle(a.drain_seconds)
    if left:
      log.warning("%d gRPC requests still in flight after %.0f s", left, a.drain_seconds)
    if self.http is not None:
      from ssr_tf.serving import rest
      self.http.shutdown()
      left = rest.drain(self.rest_front, max(a.drain_seconds - (time.monotonic() - t0), 0.0))
      if left:
        log.warning("%d REST requests still in flight after %.0f s", left, a.drain_seconds)
      self.http.server_close()
    if self.grpc_server is not None and stop_grpc:
      self.grpc_server.stop(grace=1.0).wait(2.0)
    if self.batcher is not None:
      self.batcher.stop(timeout_s=a.drain_seconds)
      st = self.batcher.stats
      log.info("Batching: %d requests in %d batches (%.2f requests/batch, most %d)",
               st.requests, st.batches, st.requests / max(st.batches, 1),
               st.max_requests_in_batch)
    self.manager.stop()
    log.info("Server stopped after draining for %.2f s", time.monotonic() - t0)


def main(argv: list[str], prog: str = "ssr_tf serve") -> int:
  """Entry point of `ssr_tf serve`; returns the exit code."""
  args = build_parser(prog).parse_args(argv)
  logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                      format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s] %(message)s",
                      datefmt="%Y-%m-%d %H:%M:%S")
  if not os.path.isdir(args.model_base_path):
    raise UserError(f"--model_base_path {args.model_base_path!r} is not a directory")
  if args.max_batch_size < 1 or args.num_batch_threads < 1 or args.max_request_rows < 1:
    raise UserError("--max_batch_size, --num_batch_threads and --max_request_rows must be >= 1")
  stop = threading.Event()
  received: list[str] = []

  def on_signal(signum, _frame):
    received.append(signal.Signals(signum).name)
    stop.set()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  server = ModelServer(args)
  try:
    server.start()
  except BaseException:
    server.stop()
    raise
  while not stop.wait(0.5):
    pass
  log.info("Received %s", received[0] if received else "stop")
  server.stop(stop_grpc=False)
  # Exit without gRPC's shutdown (see ModelServer.stop): nothing is in flight any more.
  for h in logging.getLogger().handlers:
    h.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)
