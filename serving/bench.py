"""`ssr_tf bench serving`: latency / QPS of `ssr_tf serve` over loopback gRPC, in JSON.

For every (candidates per request, concurrency) cell, closed-loop client threads (one
channel each) send pre-serialized PredictRequests of tf.Examples for a bounded number of
requests or seconds; the JSON gives p50/p90/p99/max latency, QPS and errors by status
code. The same model is also timed in-process (the server's session engine, and an
eager ``tf.saved_model.load`` signature call) at concurrency 1, and the session engine
with as many threads as each cell's concurrency (in-process QPS). ``overhead`` is the
server at concurrency 1 against the in-process call, measured in alternating rounds so
that both see the same machine load; ``breakdown`` splits one request into its stages.
One "target" cell (default 128 candidates x concurrency 4) runs longer (default 10,000
requests); ``--hot_reload`` publishes a new version in the middle of it. ``--swap``
runs a separate load (concurrency 4) with a new version published every other window
and compares p99 in the windows after each publish with the windows before.

  ssr_tf bench serving --model_base_path demo_out/export --input 'demo_out/data/test/*'
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Sequence

import ssr_tf  # noqa: F401  (TF log level before TensorFlow loads)
import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from ssr_tf.errors import UserError, output_file
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.client import RankingClient
from ssr_tf.serving.manager import list_versions
from ssr_tf.serving.process import ServerProcess

PREDICT = "/tensorflow.serving.PredictionService/Predict"
DISTINCT_REQUESTS = 8


def _ints(text: str) -> list[int]:
  try:
    vals = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not vals or min(vals) < 1:
    raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
  return vals


def _cell(text: str) -> tuple[int, int]:
  try:
    c, k = text.lower().split("x")
    return int(c), int(k)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected CANDIDATESxCONCURRENCY, e.g. 128x4, got "
                                     f"{text!r}") from None


def _pct(lat: list[float]) -> dict[str, float]:
  if not lat:
    return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
  a = np.asarray(lat) * 1e3
  return {"p50_ms": round(float(np.percentile(a, 50)), 3),
          "p90_ms": round(float(np.percentile(a, 90)), 3),
          "p99_ms": round(float(np.percentile(a, 99)), 3),
          "max_ms": round(float(a.max()), 3), "mean_ms": round(float(a.mean()), 3)}


def candidate_pool(client: RankingClient, input_glob: str, n: int, seed: int) -> list[bytes]:
  """`n` serialized tf.Examples: records from `input_glob`, or rows typed by predict_raw."""
  if input_glob:
    import tensorflow as tf
    files = sorted(glob.glob(input_glob))
    if not files:
      raise UserError(f"--input {input_glob!r} matches no file")
    recs = [r for r in tf.data.TFRecordDataset(files).take(n).as_numpy_iterator()]
    if not recs:
      raise UserError(f"--input {input_glob!r}: no records")
    return [bytes(recs[i % len(recs)]) for i in range(n)]
  types = client.feature_types()
  if not types:
    raise UserError("the model has no predict_raw signature to type synthetic rows; pass --input")
  return [examples_lib.make_example(r, types).SerializeToString()
          for r in examples_lib.synthetic_rows(types, n, seed)]


def _requests(pool: list[bytes], candidates: int, model_name: str) -> list[bytes]:
  out = []
  for j in range(DISTINCT_REQUESTS):
    start = (j * candidates) % len(pool)
    rows = [pool[(start + i) % len(pool)] for i in range(candidates)]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    t = req.inputs["examples"]
    t.dtype = 7                                   # DT_STRING
    t.tensor_shape.dim.add().size = candidates
    t.string_val.extend(rows)
    out.append(req.SerializeToString())
  return out


def _channel(target: str) -> grpc.Channel:
  """A channel to `target` that passes messages up to 64 MiB both ways."""
  return grpc.insecure_channel(target, options=[
      ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])


def _predict_calls(target: str, n: int) -> tuple[list, list]:
  """`n` channels to `target` and a Predict callable on each (serialized requests in)."""
  channels = [_channel(target) for _ in range(n)]
  calls = [ch.unary_unary(PREDICT, request_serializer=None,
                          response_deserializer=predict_pb2.PredictResponse.FromString)
           for ch in channels]
  return channels, calls


def _timed_predict(call, req: bytes, timeout_s: float, candidates: int
                   ) -> tuple[float, float, int, Optional[str]]:
  """(start, seconds, served version or -1 for a wrong output size, gRPC code or None)."""
  t0 = time.perf_counter()
  try:
    resp = call(req, timeout=timeout_s)
  except grpc.RpcError as e:
    return t0, time.perf_counter() - t0, -1, e.code().name
  dt = time.perf_counter() - t0
  ok = len(resp.outputs["click_prob"].float_val) == candidates
  return t0, dt, (resp.model_spec.version.value if ok else -1), None


def run_cell(target: str, requests: list[bytes], candidates: int, concurrency: int,
             max_requests: int, max_seconds: float, warmup: int, timeout_s: float = 10.0,
             at_fraction: Optional[tuple[float, Any]] = None) -> dict:
  """Closed-loop load: `concurrency` threads until `max_requests` or `max_seconds`."""
  lock = threading.Lock()
  lat: list[float] = []
  codes: dict[str, int] = {}
  versions: dict[int, int] = {}
  state = {"issued": 0, "fired": False}
  bad_shape = [0]
  channels, calls = _predict_calls(target, concurrency)
  for i in range(concurrency):                         # connect + warm each channel
    for k in range(max(1, warmup // concurrency)):
      try:
        calls[i](requests[k % len(requests)], timeout=timeout_s)
      except grpc.RpcError:
        pass
  deadline = time.monotonic() + max_seconds

  def worker(i: int) -> None:
    call, k = calls[i], i
    while True:
      with lock:
        if state["issued"] >= max_requests or time.monotonic() > deadline:
          return
        state["issued"] += 1
        n = state["issued"]
        fire = (at_fraction is not None and not state["fired"]
                and n >= at_fraction[0] * max_requests)
        if fire:
          state["fired"] = True
      if fire:
        threading.Thread(target=at_fraction[1], daemon=True).start()
      _, dt, v, code = _timed_predict(call, requests[k % len(requests)], timeout_s, candidates)
      k += concurrency
      with lock:
        if code is not None:
          codes[code] = codes.get(code, 0) + 1
          continue
        lat.append(dt)
        if v < 0:
          bad_shape[0] += 1
        else:
          versions[v] = versions.get(v, 0) + 1

  t0 = time.monotonic()
  threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.monotonic() - t0
  for ch in channels:
    ch.close()
  rpc_errors = sum(codes.values())
  if bad_shape[0]:
    codes["WRONG_OUTPUT_SIZE"] = bad_shape[0]
  return {"candidates": candidates, "concurrency": concurrency,
          "requests": len(lat) + rpc_errors, "errors": rpc_errors + bad_shape[0],
          "error_codes": codes,
          "seconds": round(elapsed, 2), "qps": round(len(lat) / elapsed, 1) if elapsed else 0.0,
          "candidates_per_s": round(len(lat) * candidates / elapsed, 0) if elapsed else 0.0,
          **_pct(lat), "served_versions": {str(k): v for k, v in sorted(versions.items())}}


def run_swap(target: str, requests: list[bytes], candidates: int, concurrency: int,
             publish: Callable[[int], int], swaps: int, window_s: float,
             timeout_s: float = 30.0) -> dict:
  """Closed-loop load with `swaps` new versions published, one every 2 x `window_s`.

  The timeline is [steady window][publish, swap window][steady window][publish, swap
  window]...: p99 over the requests sent in the swap windows (the `window_s` seconds from
  each publish) is compared with p99 over the steady windows just before them.
  `publish(i)` makes swap i's version directory appear and returns its number.
  """
  lock = threading.Lock()
  records: list[tuple[float, float, int]] = []      # (start, latency, version)
  codes: dict[str, int] = {}
  done = threading.Event()
  channels, calls = _predict_calls(target, concurrency)
  for call in calls:
    for k in range(4):
      call(requests[k % len(requests)], timeout=timeout_s)

  def worker(i: int) -> None:
    call, k = calls[i], i
    while not done.is_set():
      t0, dt, v, code = _timed_predict(call, requests[k % len(requests)], timeout_s, candidates)
      k += concurrency
      with lock:
        if code is None:
          records.append((t0, dt, v))
        else:
          codes[code] = codes.get(code, 0) + 1

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
  for t in threads:
    t.start()
  events = []
  try:
    for i in range(swaps):
      time.sleep(window_s)                             # steady window
      t_pub = time.perf_counter()
      version = publish(i)
      events.append((t_pub, version))
      time.sleep(window_s)                             # swap window
  finally:
    done.set()
    for t in threads:
      t.join()
    for ch in channels:
      ch.close()
  bad = sum(1 for r in records if r[2] == -1)
  if bad:
    codes["WRONG_OUTPUT_SIZE"] = bad
  steady, swapping, per_swap = [], [], []
  for t_pub, version in events:
    before = [dt for t0, dt, _ in records if t_pub - window_s <= t0 < t_pub]
    after = [dt for t0, dt, _ in records if t_pub <= t0 < t_pub + window_s]
    first_new = min((t0 + dt for t0, dt, v in records if v == version), default=None)
    steady += before
    swapping += after
    p_before, p_after = _pct(before)["p99_ms"], _pct(after)["p99_ms"]
    per_swap.append({
        "version": version, "steady_requests": len(before), "swap_requests": len(after),
        "steady_p50_ms": _pct(before)["p50_ms"], "steady_p99_ms": p_before,
        "swap_p50_ms": _pct(after)["p50_ms"], "swap_p99_ms": p_after,
        "swap_max_ms": _pct(after)["max_ms"],
        "ratio_p99": round(p_after / p_before, 3) if p_before and p_after else None,
        "seconds_to_first_new_response": (round(first_new - t_pub, 3)
                                          if first_new is not None else None)})
  served: dict[str, int] = {}
  for _, _, v in records:
    served[str(v)] = served.get(str(v), 0) + 1
  p_steady, p_swap = _pct(steady)["p99_ms"], _pct(swapping)["p99_ms"]
  return {"candidates": candidates, "concurrency": concurrency, "swaps": swaps,
          "window_s": window_s, "requests": len(records) + sum(codes.values()) - bad,
          "errors": sum(codes.values()), "error_codes": codes,
          "steady_p50_ms": _pct(steady)["p50_ms"], "steady_p99_ms": p_steady,
          "swap_p50_ms": _pct(swapping)["p50_ms"], "swap_p99_ms": p_swap,
          "ratio_p99": round(p_swap / p_steady, 3) if p_steady and p_swap else None,
          "per_swap": per_swap, "served_versions": dict(sorted(served.items()))}


def _servable(export_dir: str, server_args: list[str]):
  """The export loaded the way `ssr_tf serve` with `server_args` loads it."""
  from ssr_tf.serving import server as server_lib
  from ssr_tf.serving.servable import Servable
  a = server_lib.build_parser("bench").parse_args(["--model_base_path", export_dir] +
                                                  server_args)
  return Servable("bench", 0, export_dir, a.tensorflow_intra_op_parallelism,
                  a.tensorflow_inter_op_parallelism)


def _feeds(pool: list[bytes], c: int) -> np.ndarray:
  arr = np.empty(c, dtype=object)
  arr[:] = [pool[i % len(pool)] for i in range(c)]
  return arr


def _threaded(fn, threads: int, per_thread: int, max_seconds: float) -> tuple[list[float], float]:
  """Runs `fn` closed-loop on `threads` threads; (latencies, elapsed seconds)."""
  lats: list[list[float]] = [[] for _ in range(threads)]
  stop = time.monotonic() + max_seconds

  def loop(i: int) -> None:
    for _ in range(per_thread):
      t0 = time.perf_counter()
      fn()
      lats[i].append(time.perf_counter() - t0)
      if time.monotonic() > stop:
        return

  ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
  t0 = time.monotonic()
  for t in ts:
    t.start()
  for t in ts:
    t.join()
  return [x for part in lats for x in part], time.monotonic() - t0


def in_process(export_dir: str, pool: list[bytes], sizes: list[int], n: int,
               server_args: list[str], target: tuple[int, int],
               concurrency: Sequence[int] = ()) -> list[dict]:
  """The model called in-process, with the server's engine settings (`server_args`).

  Per size at concurrency 1: the session engine the server uses and an eager
  ``tf.saved_model.load`` signature call. Per size and each concurrency > 1 (and the
  target cell's): the session engine on that many threads, with its QPS: the latency
  and throughput floor without any serving.
  """
  import tensorflow as tf
  servable = _servable(export_dir, server_args)
  sig = servable.signature("serving_default")
  eager = tf.saved_model.load(export_dir).signatures["serving_default"]
  out = []
  for c in sizes:
    arr = _feeds(pool, c)
    strings = tf.constant(list(arr))
    for engine, fn in (("session", lambda: servable.run(sig, {"examples": arr})),
                       ("eager", lambda: eager(examples=strings))):
      for _ in range(10):
        fn()
      lat, elapsed = _threaded(fn, 1, n, 30.0)
      out.append({"candidates": c, "engine": engine, "concurrency": 1, "requests": len(lat),
                  "qps": round(len(lat) / elapsed, 1), **_pct(lat)})
    levels = sorted({k for k in concurrency if k > 1} |
                    ({target[1]} if c == target[0] and target[1] > 1 else set()))
    for k in levels:
      lat, elapsed = _threaded(lambda: servable.run(sig, {"examples": arr}), k,
                               max(n // k, 10), 30.0)
      out.append({"candidates": c, "engine": "session", "concurrency": k, "requests": len(lat),
                  "qps": round(len(lat) / elapsed, 1), **_pct(lat)})
  servable.close()
  return out


def interleaved_overhead(target: str, export_dir: str, pool: list[bytes], sizes: list[int],
                         model_name: str, server_args: list[str], rounds: int = 5,
                         per_round: int = 40) -> list[dict]:
  """Server at concurrency 1 vs the in-process session call, in alternating rounds.

  Each round times `per_round` in-process calls, then `per_round` gRPC Predicts of the same
  candidates; the ratio is the median over rounds of (server p50 / in-process p50), so a
  change of machine load between rounds does not bias it.
  """
  servable = _servable(export_dir, server_args)
  sig = servable.signature("serving_default")
  (channel,), (call,) = _predict_calls(target, 1)
  out = []
  for c in sizes:
    arr = _feeds(pool, c)
    req = _requests(pool, c, model_name)[0]
    inproc = lambda: servable.run(sig, {"examples": arr})  # noqa: E731
    remote = lambda: call(req, timeout=30)  # noqa: E731
    for _ in range(5):
      inproc()
      remote()
    server_p50, inproc_p50 = [], []
    for _ in range(rounds):
      for fn, dest in ((inproc, inproc_p50), (remote, server_p50)):
        lat, _ = _threaded(fn, 1, per_round, 30.0)
        dest.append(float(np.percentile(np.asarray(lat) * 1e3, 50)))
    ratios = [s_ / i_ for s_, i_ in zip(server_p50, inproc_p50)]
    out.append({"candidates": c, "rounds": rounds, "calls_per_round": per_round,
                "server_p50_ms": round(float(np.median(server_p50)), 3),
                "inprocess_p50_ms": round(float(np.median(inproc_p50)), 3),
                "ratio": round(float(np.median(ratios)), 3),
                "ratio_per_round": [round(r, 3) for r in ratios]})
  channel.close()
  servable.close()
  return out


def breakdown(target: str, export_dir: str, pool: list[bytes], candidates: int,
              model_name: str, server_args: list[str], n: int = 200) -> dict:
  """Median microseconds of each stage of one Predict of `candidates` tf.Examples.

  The in-process stages run the server's own code (ServingCore with the server's batcher
  settings) on one request; ``grpc_status_roundtrip_us`` is a GetModelStatus call to the
  server, i.e. gRPC transport, both Python gRPC stacks and the thread hand-offs with no
  model work; ``grpc_predict_roundtrip_us`` is the whole request.
  """
  from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
  from ssr_tf.serving import server as server_lib
  from ssr_tf.serving.batching import Batcher
  from ssr_tf.serving.core import ServingCore
  from ssr_tf.serving.tensors import check_feeds, ndarray_to_tensor, tensor_to_ndarray
  a = server_lib.build_parser("bench").parse_args(["--model_base_path", export_dir] +
                                                  server_args)
  servable = _servable(export_dir, server_args)
  batcher = (Batcher(a.max_batch_size, a.batch_timeout_micros / 1e6, a.max_queued_requests,
                     a.num_batch_threads) if a.enable_batching else None)

  class _One:                      # a manager that always hands out `servable`
    def acquire(self, name, version=None):
      return servable

    def release(self, s):
      pass

  core = ServingCore(_One(), batcher, a.max_request_rows)  # type: ignore[arg-type]
  sig = servable.signature("serving_default")
  raw = _requests(pool, candidates, model_name)[0]
  req = predict_pb2.PredictRequest.FromString(raw)
  feeds = {"examples": tensor_to_ndarray("examples", req.inputs["examples"])}
  out = servable.run(sig, feeds)
  channel = _channel(target)
  predict = channel.unary_unary(PREDICT, request_serializer=None, response_deserializer=None)
  status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
  sreq = get_model_status_pb2.GetModelStatusRequest()
  sreq.model_spec.name = model_name

  def encode():
    resp = predict_pb2.PredictResponse()
    for k in sorted(out):
      ndarray_to_tensor(out[k], resp.outputs[k])
    return resp

  stages = {
      "parse_request_us": lambda: predict_pb2.PredictRequest.FromString(raw),
      "request_to_ndarray_us": lambda: tensor_to_ndarray("examples", req.inputs["examples"]),
      "validate_us": lambda: check_feeds(sig.name, sig.inputs, feeds, a.max_request_rows),
      "session_call_us": lambda: servable.run(sig, feeds),
      "batcher_and_session_call_us": lambda: core.infer(servable, sig, feeds, candidates),
      "outputs_to_response_us": encode,
      "serialize_response_us": lambda: encode().SerializeToString(),
      "core_predict_us": lambda: core.predict(req),
      "grpc_status_roundtrip_us": lambda: status(sreq, timeout=30),
      "grpc_predict_roundtrip_us": lambda: predict(raw, timeout=30),
  }
  times: dict[str, list[float]] = {k: [] for k in stages}
  for fn in stages.values():
    for _ in range(5):
      fn()
  for _ in range(4):                       # alternating rounds, as in interleaved_overhead
    for k, fn in stages.items():
      lat, _ = _threaded(fn, 1, n // 4, 30.0)
      times[k].extend(lat)
  result: dict[str, Any] = {"candidates": candidates, "calls": n}
  result.update({k: round(float(np.median(v)) * 1e6, 1) for k, v in times.items()})
  result["server_overhead_us"] = round(result["grpc_predict_roundtrip_us"] -
                                       result["session_call_us"], 1)
  channel.close()
  if batcher is not None:
    batcher.stop()
  servable.close()
  return result


def main(argv: list[str], prog: str = "ssr_tf bench serving") -> int:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--model_base_path", default="",
                 help="export base path; the bench starts `ssr_tf serve` on it (loopback)")
  p.add_argument("--server", default="", help="HOST:PORT of a running server instead")
  p.add_argument("--model_name", default="ssr")
  p.add_argument("--input", default="", help="TFRecord glob of candidate tf.Examples "
                 "(default: synthetic rows typed by predict_raw)")
  p.add_argument("--candidates", type=_ints, default=[1, 32, 128, 512])
  p.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
  p.add_argument("--requests", type=int, default=1000, help="requests per cell (at most)")
  p.add_argument("--max_seconds", type=float, default=20.0, help="seconds per cell (at most)")
  p.add_argument("--warmup", type=int, default=16, help="untimed requests per cell")
  p.add_argument("--target", type=_cell, default=(128, 4), help="the cell run longer")
  p.add_argument("--target_requests", type=int, default=10000)
  p.add_argument("--target_max_seconds", type=float, default=180.0)
  p.add_argument("--target_p99_ms", type=float, default=10.0)
  p.add_argument("--hot_reload", action="store_true",
                 help="publish a copy of the model as a new version during the target cell "
                      "(needs --model_base_path; works on a temporary copy)")
  p.add_argument("--swap", action="store_true",
                 help="measure p99 around version swaps under load (needs --model_base_path; "
                      "works on a temporary copy)")
  p.add_argument("--swap_count", type=int, default=2, help="versions published in --swap")
  p.add_argument("--swap_window_seconds", type=float, default=10.0,
                 help="length of each steady and each swap window")
  p.add_argument("--swap_cell", type=_cell, default=(128, 4),
                 help="candidates x concurrency of the --swap load")
  p.add_argument("--swap_ratio_limit", type=float, default=1.5,
                 help="target for swap p99 / steady p99")
  p.add_argument("--overhead_ratio_limit", type=float, default=1.15,
                 help="target for server p50 / in-process p50 at 128 candidates")
  p.add_argument("--overhead_rounds", type=int, default=5,
                 help="alternating in-process / server rounds per size (0 = skip)")
  p.add_argument("--inprocess_requests", type=int, default=300,
                 help="in-process calls per size (0 = skip)")
  p.add_argument("--server_args", default="",
                 help="extra `ssr_tf serve` flags, space-separated; write it with '=' "
                      "(--server_args='--max_batch_size=128 --num_batch_threads=1')")
  p.add_argument("--output", default="", help="also write the JSON here")
  args = p.parse_args(argv)
  if bool(args.model_base_path) == bool(args.server):
    p.error("give exactly one of --model_base_path and --server")
  if (args.hot_reload or args.swap) and not args.model_base_path:
    p.error("--hot_reload and --swap need --model_base_path")
  if args.output:
    output_file(args.output)             # before the benchmark runs, not after
  server_args = args.server_args.split()
  result: dict[str, Any] = {
      "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
               "python": platform.python_version(), "loadavg_start": os.getloadavg()},
      "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
  }
  tmp = None
  srv = None
  export_dir = None
  try:
    if args.model_base_path:
      versions = list_versions(args.model_base_path)
      if not versions:
        raise UserError(f"no SavedModel version under {args.model_base_path}")
      top = max(versions)
      export_dir = versions[top]
      base = args.model_base_path
      if args.hot_reload or args.swap:    # never touch the user's directory: serve a copy
        tmp = tempfile.mkdtemp(prefix="ssr_bench_")
        base = os.path.join(tmp, "models")
        shutil.copytree(export_dir, os.path.join(base, str(top)))
      srv = ServerProcess(base, server_args, model_name=args.model_name,
                          log_path=os.path.join(tmp, "server.log") if tmp else None)
      srv.start()
      srv.wait_available(120)
      target = srv.target
      result["server"] = {"target": target, "flags": server_args, "version": top,
                          "export_dir": export_dir}
    else:
      target = args.server
    with RankingClient(target, args.model_name) as client:
      client.wait_until_available(60)
      pool = candidate_pool(client, args.input, max(args.candidates) * 2, seed=0)
    if export_dir and args.inprocess_requests > 0:
      result["inprocess"] = in_process(export_dir, pool, args.candidates,
                                       args.inprocess_requests, server_args,
                                       tuple(args.target), args.concurrency)
    if export_dir and args.overhead_rounds > 0:
      result["overhead_interleaved"] = interleaved_overhead(
          target, export_dir, pool, args.candidates, args.model_name, server_args,
          args.overhead_rounds)
      result["breakdown"] = breakdown(target, export_dir, pool, 128, args.model_name,
                                      server_args)
    cells = []
    for c in args.candidates:
      reqs = _requests(pool, c, args.model_name)
      for k in args.concurrency:
        is_target = (c, k) == tuple(args.target)
        hook = None
        if is_target and args.hot_reload:
          new_version = max(list_versions(base)) + 1

          def publish(src=export_dir, base=base, v=new_version):
            stage = os.path.join(tmp, f"stage{v}")
            shutil.copytree(src, stage)
            os.rename(stage, os.path.join(base, str(v)))
            result["hot_reload"] = {"published_version": v, "at": "1/3 of the target cell"}
          hook = (1 / 3, publish)
        cell = run_cell(target, reqs, c, k,
                        args.target_requests if is_target else args.requests,
                        args.target_max_seconds if is_target else args.max_seconds,
                        args.warmup, at_fraction=hook)
        cell["target"] = is_target
        cells.append(cell)
        print(json.dumps({k2: cell[k2] for k2 in ("candidates", "concurrency", "requests",
                                                   "errors", "qps", "p50_ms", "p99_ms")}),
              flush=True, file=sys.stderr)
    result["cells"] = cells
    inproc = {(r["candidates"], r["engine"]): r for r in result.get("inprocess", [])
              if r["concurrency"] == 1}
    overhead = []
    for cell in cells:
      if cell["concurrency"] == 1 and (cell["candidates"], "session") in inproc:
        base_ms = inproc[(cell["candidates"], "session")]["p50_ms"]
        eager_ms = inproc[(cell["candidates"], "eager")]["p50_ms"]
        overhead.append({"candidates": cell["candidates"], "serving_p50_ms": cell["p50_ms"],
                         "inprocess_session_p50_ms": base_ms, "inprocess_eager_p50_ms": eager_ms,
                         "ratio_vs_session": round(cell["p50_ms"] / base_ms, 2),
                         "ratio_vs_eager": round(cell["p50_ms"] / eager_ms, 2)})
    result["overhead"] = overhead
    at128 = next((o for o in result.get("overhead_interleaved", []) if o["candidates"] == 128),
                  None)
    if at128 is not None:
      result["overhead_target"] = {"candidates": 128, "ratio": at128["ratio"],
                                   "limit": args.overhead_ratio_limit,
                                   "met": at128["ratio"] <= args.overhead_ratio_limit}
    floors = {(r["candidates"], r["concurrency"]): r for r in result.get("inprocess", [])
              if r["engine"] == "session"}
    result["qps_vs_inprocess"] = [
        {"candidates": c["candidates"], "concurrency": c["concurrency"], "server_qps": c["qps"],
         "inprocess_qps": floors[(c["candidates"], c["concurrency"])]["qps"],
         "ratio": round(c["qps"] / floors[(c["candidates"], c["concurrency"])]["qps"], 3)}
        for c in cells if (c["candidates"], c["concurrency"]) in floors]
    if args.swap:
      sc, sk = args.swap_cell
      first = max(list_versions(base)) + 1
      staged = []
      for i in range(args.swap_count):          # copies made before the load starts
        stage = os.path.join(tmp, f"stage{first + i}")
        shutil.copytree(export_dir, stage)
        staged.append(stage)

      def publish_swap(i: int) -> int:
        os.rename(staged[i], os.path.join(base, str(first + i)))
        return first + i

      swap = run_swap(target, _requests(pool, sc, args.model_name), sc, sk, publish_swap,
                      args.swap_count, args.swap_window_seconds)
      swap["ratio_limit"] = args.swap_ratio_limit
      swap["met"] = (swap["errors"] == 0 and swap["ratio_p99"] is not None
                     and swap["ratio_p99"] <= args.swap_ratio_limit)
      result["swap"] = swap
      print(json.dumps({k2: swap[k2] for k2 in ("requests", "errors", "steady_p99_ms",
                                                 "swap_p99_ms", "ratio_p99")}),
            flush=True, file=sys.stderr)
    tc = next((x for x in cells if x["target"]), None)
    if tc is not None:
      floor = next((r for r in result.get("inprocess", []) if r["concurrency"] ==
                    tc["concurrency"] and r["candidates"] == tc["candidates"]), None)
      result["target"] = {"cell": f"{tc['candidates']}x{tc['concurrency']}",
                          "requests": tc["requests"], "errors": tc["errors"],
                          "p50_ms": tc["p50_ms"], "p99_ms": tc["p99_ms"],
                          "inprocess_same_concurrency_p99_ms": floor["p99_ms"] if floor else None,
                          "p99_limit_ms": args.target_p99_ms,
                          "met": tc["errors"] == 0 and tc["p99_ms"] is not None
                          and tc["p99_ms"] <= args.target_p99_ms}
      if "hot_reload" in result:
        result["hot_reload"]["served_versions"] = tc["served_versions"]
        result["hot_reload"]["errors"] = tc["errors"]
    result["host"]["loadavg_end"] = os.getloadavg()
  finally:
    if srv is not None:
      code = srv.stop()
      result.setdefault("server", {})["exit_code"] = code
      log = srv.log()
      result["server"]["batching"] = next(
          (line.split("] ", 1)[-1] for line in log.splitlines() if "Batching:" in line), None)
      result["server"]["loads"] = [line.split("] ", 1)[-1] for line in log.splitlines()
                                   if "Successfully loaded" in line or "Warm-up of" in line]
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)
  text = json.dumps(result, indent=2)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")
  return 0
