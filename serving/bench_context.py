"""`ssr_tf bench context`: one request of N candidates sent as context + candidates vs flat.

Builds the config's model over a feature spec whose context features are marked
``context: true`` (default: the synthetic data's user and request features), exports it
(pure TF, with its warm-up file), and times the same request both ways:

* model: the export's session (as ``ssr_tf serve`` runs it, one intra-op thread),
  ``serving_default`` on N merged examples vs ``context_candidates`` on one context and N
  candidates, and (unless --no_broadcast) ``context_broadcast``: the context signature of
  the same model exported without the backbone's first-layer split (ssr_tf/context.py);
* end to end: gRPC Predict through ``ssr_tf serve`` on loopback, the flat request vs the
  context one (and Classify with ExampleListWithContext, which the server routes to the
  context signature), one request at a time.

Requests alternate between the two ways in blocks, so drift in the machine's load hits
both. Prints JSON: per way p50 / p90 / mean ms, ratio = flat p50 / context p50 (model:
ratio_p50_broadcast = context_broadcast p50 / context p50), and the request bytes.

  ssr_tf bench context --config configs/demo_ssr_d.yaml --candidates 128
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable

import ssr_tf  # noqa: F401  (TF log level before TensorFlow loads)
import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from ssr_tf.errors import UserError
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.process import ServerProcess

# The synthetic data set's features about the user and the request (ssr_tf/synth.py).
SYNTH_CONTEXT = ("scene", "user_id", "hour", "device", "query", "history_categories")
BLOCK = 10


def _stats(seconds: list[float]) -> dict:
  a = np.asarray(seconds) * 1e3
  return {"p50_ms": round(float(np.percentile(a, 50)), 3),
          "p90_ms": round(float(np.percentile(a, 90)), 3),
          "mean_ms": round(float(a.mean()), 3), "n": len(seconds)}


def time_pair(fns: dict[str, Callable[[], object]], requests: int, warmup: int = 5) -> dict:
  """{name: latency stats}: each fn called `requests` times, in alternating blocks."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times: dict[str, list[float]] = {k: [] for k in fns}
  done = 0
  while done < requests:
    n = min(BLOCK, requests - done)
    for name, fn in fns.items():
      for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    done += n
  return {k: _stats(v) for k, v in times.items()}


def make_request(records: list[bytes], names: list[str], n: int
                 ) -> tuple[bytes, list[bytes], list[bytes]]:
  """(context, candidates, flat examples) of one request: the first record's context
  features, the candidate features of `n` records, and the two merged."""
  recs = [records[i % len(records)] for i in range(n)]
  ctx = examples_lib.split_context(recs[:1], names)[0][0]
  cands = [c for _, group, _ in examples_lib.split_context(recs, names) for c in group]
  flat = []
  for c in cands:
    m = example_pb2.Example.FromString(ctx)
    m.MergeFrom(example_pb2.Example.FromString(c))
    flat.append(m.SerializeToString())
  return ctx, cands, flat


def _broadcast_module_cls():
  """ServingModule whose context signature runs the backbone on the broadcast fields."""
  import tensorflow as tf
  from ssr_tf import context as context_lib
  from ssr_tf.export import ServingModule

  class BroadcastModule(ServingModule):

    def serve_context(self, context, candidates):
      out = context_lib.score_context_candidates(self.model, self._spec, context, candidates,
                                                 split=False)
      return {k: tf.identity(v, name=k) for k, v in out.items()}
  return BroadcastModule


def build_export(config: str, data_dir: str, names: list[str], out: str,
                 checkpoint: str = "", broadcast_out: str = ""
                 ) -> tuple[str, list[bytes], dict, str]:
  """Exports the config's model (weights from `checkpoint`, else as initialised) over
  `data_dir`'s spec with `names` marked context; with `broadcast_out`, the same model
  again there with a context signature that does not split the backbone's first layer.
  Returns (version dir, test records, spec summary, broadcast version dir or "")."""
  import glob
  import tensorflow as tf
  from ssr_tf import task
  from ssr_tf.config import load_config
  from ssr_tf.export import export_saved_model
  cfg = load_config(config)
  cfg.data.spec = os.path.join(data_dir, "spec.yaml")
  if cfg.model.name in ("ssr", "ssr_msn") or "impl" in cfg.model.backbone:
    cfg.model.backbone = {**cfg.model.backbone, "impl": "tf"}     # as `ssr_tf export`
  spec, model = task.build(cfg)
  unknown = sorted(set(names) - set(spec.feature_names))
  if unknown:
    raise UserError(f"--context: no such features in {cfg.data.spec}: {unknown}")
  for f in spec.features:
    f.context = f.name in names
  if checkpoint:
    task.restore(model, "", checkpoint)
  files = sorted(glob.glob(os.path.join(data_dir, "test", "*")))
  if not files:
    raise UserError(f"--data {data_dir}: no test/* shards")
  records = [bytes(r) for r in tf.data.TFRecordDataset(files).take(512).as_numpy_iterator()]
  path = export_saved_model(model, spec, out, warmup=records, batches=(1, 32, 128))
  broadcast = ""
  if broadcast_out:
    from ssr_tf import export as export_lib
    module_cls = export_lib.ServingModule
    export_lib.ServingModule = _broadcast_module_cls()
    try:
      broadcast = export_saved_model(model, spec, broadcast_out, warmup=records,
                                     batches=(1, 32, 128))
    finally:
      export_lib.ServingModule = module_cls
  summary = {"features": len(spec.features), "context_features": [f.name for f in spec.features
                                                                   if f.context],
             "model": cfg.model.name, "embedding_dim": cfg.model.embedding_dim,
             "backbone": cfg.model.backbone, "weights": checkpoint or "initialised (untrained)",
             "splits_first_layer": bool(getattr(model.backbone, "splits_first_layer", False))}
  return path, records, summary, broadcast


def model_times(path: str, ctx: bytes, cands: list[bytes], flat: list[bytes],
                requests: int, broadcast: str = "") -> dict:
  """In-process session time of the two signatures (the server's engine); with
  `broadcast` (an export whose context signature does not split the first layer), its
  context signature as a third way, ``context_broadcast``."""
  from ssr_tf.serving.servable import Servable
  s = Servable("bench", 1, path, intra_op_threads=1, inter_op_threads=1)
  sd, sc = s.signatures["serving_default"], s.signatures[examples_lib.CONTEXT_SIGNATURE]
  arr = lambda v: np.array(v, dtype=object)
  flat_feeds = {"examples": arr(flat)}
  ctx_feeds = {examples_lib.CONTEXT_INPUT: arr([ctx]), examples_lib.CANDIDATES_INPUT: arr(cands)}
  a, b = s.run(sd, flat_feeds), s.run(sc, ctx_feeds)
  diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
  fns = {"flat": lambda: s.run(sd, flat_feeds), "context": lambda: s.run(sc, ctx_feeds)}
  sb = None
  if broadcast:
    sb = Servable("bench_broadcast", 1, broadcast, intra_op_threads=1, inter_op_threads=1)
    scb = sb.signatures[examples_lib.CONTEXT_SIGNATURE]
    c = sb.run(scb, ctx_feeds)
    broadcast_diff = max(float(np.abs(a[k] - c[k]).max()) for k in a)
    fns["context_broadcast"] = lambda: sb.run(scb, ctx_feeds)
  out = time_pair(fns, requests)
  out["max_abs_score_diff"] = diff
  if sb is not None:
    out["max_abs_score_diff_broadcast"] = broadcast_diff
    out["ratio_p50_broadcast"] = round(out["context_broadcast"]["p50_ms"] /
                                       out["context"]["p50_ms"], 3)
    sb.close()
  s.close()
  return out


def server_times(base: str, ctx: bytes, cands: list[bytes], flat: list[bytes],
                 requests: int) -> dict:
  """End-to-end gRPC latency through `ssr_tf serve` (loopback, one request at a time)."""
  import tensorflow as tf
  pred_flat = predict_pb2.PredictRequest()
  pred_flat.model_spec.name = "ssr"
  pred_flat.inputs["examples"].CopyFrom(tf.make_tensor_proto(flat, dtype=tf.string))
  pred_ctx = predict_pb2.PredictRequest()
  pred_ctx.model_spec.name = "ssr"
  pred_ctx.model_spec.signature_name = examples_lib.CONTEXT_SIGNATURE
  pred_ctx.inputs[examples_lib.CONTEXT_INPUT].CopyFrom(tf.make_tensor_proto([ctx], dtype=tf.string))
  pred_ctx.inputs[examples_lib.CANDIDATES_INPUT].CopyFrom(
      tf.make_tensor_proto(cands, dtype=tf.string))
  cls_ctx = classification_pb2.ClassificationRequest()
  cls_ctx.model_spec.name = "ssr"
  wc = cls_ctx.input.example_list_with_context
  wc.context.ParseFromString(ctx)
  for c in cands:
    wc.examples.add().ParseFromString(c)
  with ServerProcess(base, ["--file_system_poll_wait_seconds=60"]) as srv:
    channel = grpc.insecure_channel(srv.target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    a = tf.make_ndarray(stub.Predict(pred_flat, timeout=30).outputs["click_prob"])
    b = tf.make_ndarray(stub.Predict(pred_ctx, timeout=30).outputs["click_prob"])
    out = time_pair({"flat": lambda: stub.Predict(pred_flat, timeout=30),
                     "context": lambda: stub.Predict(pred_ctx, timeout=30),
                     "classify_with_context": lambda: stub.Classify(cls_ctx, timeout=30)},
                    requests)
    channel.close()
  out["max_abs_score_diff"] = float(np.abs(a - b).max())
  out["request_bytes"] = {"flat": pred_flat.ByteSize(), "context": pred_ctx.ByteSize(),
                          "classify_with_context": cls_ctx.ByteSize()}
  return out


def _commit() -> str:
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                          text=True, timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def main(argv: list[str], prog: str = "ssr_tf bench context") -> int:
  p = argparse.ArgumentParser(prog=prog, description="Time one N-candidate request sent as "
                              "context + candidates vs flat: model and end to end.")
  p.add_argument("--config", default="configs/demo_ssr_d.yaml",
                 help="experiment config whose model is built (its data.spec is replaced)")
  p.add_argument("--data", default="", help="synthetic data dir (spec.yaml, test/*); default: "
                 "write 4,000 rows of `ssr_tf data synth` to a temp dir")
  p.add_argument("--history_len", type=int, default=5,
                 help="synthetic data only: max_len of the user's history_categories (the "
                      "demo's 5; production histories are often 50 or more)")
  p.add_argument("--checkpoint", default="", help="weights to restore (default: untrained; "
                 "the timing does not depend on them)")
  p.add_argument("--context", default=",".join(SYNTH_CONTEXT),
                 help="comma-separated features marked context: true")
  p.add_argument("--candidates", type=int, default=128)
  p.add_argument("--requests", type=int, default=400, help="timed requests per way")
  p.add_argument("--skip_server", action="store_true", help="model time only")
  p.add_argument("--no_broadcast", action="store_true",
                 help="model time: leave out the third way, the same model's context "
                      "signature without the first-layer split (context_broadcast)")
  args = p.parse_args(argv)
  names = [n.strip() for n in args.context.split(",") if n.strip()]
  with tempfile.TemporaryDirectory(prefix="ssr_bench_context_") as tmp:
    data = args.data
    if not data:
      from ssr_tf import synth
      data = os.path.join(tmp, "data")
      synth.write(synth.SynthConfig(rows=4000, seed=0, shards=1,
                                    history_len=args.history_len), data)
    base = os.path.join(tmp, "export")
    path, records, summary, broadcast = build_export(
        args.config, data, names, base, args.checkpoint,
        "" if args.no_broadcast else os.path.join(tmp, "export_broadcast"))
    ctx, cands, flat = make_request(records, names, args.candidates)
    result = {"bench": "context", "date": datetime.datetime.now(datetime.timezone.utc)
              .strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit(),
              "host": f"{platform.node()} ({os.cpu_count()} cores)", "command": " ".join(
                  ["ssr_tf bench context"] + argv), "candidates": args.candidates,
              "spec": {**summary, "history_len": None if args.data else args.history_len}}
    m = model_times(path, ctx, cands, flat, args.requests, broadcast)
    m["ratio_p50"] = round(m["flat"]["p50_ms"] / m["context"]["p50_ms"], 3)
    result["model"] = m
    if not args.skip_server:
      e = server_times(base, ctx, cands, flat, args.requests)
      e["ratio_p50"] = round(e["flat"]["p50_ms"] / e["context"]["p50_ms"], 3)
      result["end_to_end"] = e
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
