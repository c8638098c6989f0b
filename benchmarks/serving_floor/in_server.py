"""Where a 128-candidate Predict's time goes inside `ssr_tf serve`'s process (patched timers).

Usage: python in_server.py EXPORT_BASE TEST_GLOB [server flags]
"""
import glob, json, os, statistics, subprocess, sys, tempfile, time, threading
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from ssr_tf.serving import server as server_lib
from ssr_tf.serving import core as core_lib
from ssr_tf.serving import servable as servable_lib

EXPORT, DATA = sys.argv[1], sys.argv[2]
N = 128
pool = [bytes(r) for r in tf.data.TFRecordDataset(sorted(glob.glob(DATA))[:1]).take(N).as_numpy_iterator()]
req = predict_pb2.PredictRequest()
req.model_spec.name = "ssr"  # ssr_tf serve's default --model_name
tp = req.inputs["examples"]
tp.dtype = tf.string.as_datatype_enum
tp.tensor_shape.dim.add().size = N
tp.string_val.extend(pool)
raw = req.SerializeToString()
REQ = os.path.join(tempfile.mkdtemp(), "req.bin")
open(REQ, "wb").write(raw)

args = server_lib.build_parser("x").parse_args(["--model_base_path", EXPORT, "--port", "0"] + sys.argv[3:])
srv = server_lib.ModelServer(args)
srv.start()
times = {"predict": [], "run": [], "handler": []}
orig_predict = core_lib.ServingCore.predict
def timed_predict(self, request, deadline=None):
  t0 = time.perf_counter(); r = orig_predict(self, request, deadline); times["predict"].append(time.perf_counter() - t0); return r
core_lib.ServingCore.predict = timed_predict
orig_run = servable_lib.Servable.run
def timed_run(self, sig, feeds, outputs=None):
  t0 = time.perf_counter(); r = orig_run(self, sig, feeds, outputs); times["run"].append(time.perf_counter() - t0); return r
servable_lib.Servable.run = timed_run
orig_call = server_lib._call
def timed_call(context, fn, gate=None):
  t0 = time.perf_counter(); r = orig_call(context, fn, gate); times["handler"].append(time.perf_counter() - t0); return r
server_lib._call = timed_call

client = r'''
import sys, time, statistics, grpc
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.max_send_message_length", 64<<20)])
call = ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
raw = open(sys.argv[2], "rb").read()
for _ in range(20): call(raw, timeout=30)
lat = []
for _ in range(300):
  t0 = time.perf_counter(); call(raw, timeout=30); lat.append(time.perf_counter() - t0)
print(round(statistics.median(lat) * 1e3, 3))
'''
for k in times: times[k].clear()
out = subprocess.run([sys.executable, "-c", client, f"127.0.0.1:{srv.grpc_port}", REQ], capture_output=True, text=True)  # noqa: E501
rt = float(out.stdout.strip() or "nan")
med = {k: round(statistics.median(v[-300:]) * 1e3, 3) for k, v in times.items() if v}
# the same session call, same process, direct loop on this thread
s = srv.manager.acquire(args.model_name)
sig = s.signature("serving_default")
arr = np.empty(N, dtype=object); arr[:] = pool
direct = []
for _ in range(20): orig_run(s, sig, {"examples": arr})
for _ in range(300):
  t0 = time.perf_counter(); orig_run(s, sig, {"examples": arr}); direct.append(time.perf_counter() - t0)
srv.manager.release(s)
print(json.dumps({"client_roundtrip_ms": rt, "server_side_ms": med,
                  "direct_session_same_process_ms": round(statistics.median(direct) * 1e3, 3),
                  "args": sys.argv[3:]}))
srv.stop()
os._exit(0)
