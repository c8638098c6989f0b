"""The session call back to back vs with idle gaps (a closed-loop client's think time).

Usage: python idle_gap.py EXPORT_BASE TEST_GLOB
"""
import glob, os, statistics, sys, time, threading
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np, tensorflow as tf
from ssr_tf.serving import server as server_lib
from ssr_tf.serving.servable import Servable
EXPORT, DATA = sys.argv[1], sys.argv[2]
pool = [bytes(r) for r in tf.data.TFRecordDataset(sorted(glob.glob(DATA))[:1]).take(128).as_numpy_iterator()]
a = server_lib.build_parser("x").parse_args(["--model_base_path", EXPORT])
s = Servable("ssr", 1, EXPORT + "/1", a.tensorflow_intra_op_parallelism, a.tensorflow_inter_op_parallelism)
sig = s.signature("serving_default")
arr = np.empty(128, dtype=object); arr[:] = pool
def run(gap, thread=False):
  lat = []
  def body():
    for _ in range(20): s.run(sig, {"examples": arr})
    for _ in range(300):
      if gap: time.sleep(gap)
      t0 = time.perf_counter(); s.run(sig, {"examples": arr}); lat.append(time.perf_counter() - t0)
  if thread:
    t = threading.Thread(target=body); t.start(); t.join()
  else:
    body()
  return round(statistics.median(lat) * 1e3, 3)
for rep in range(2):
  print({"back_to_back": run(0), "gap_1.3ms": run(0.0013), "gap_5ms": run(0.005), "gap_1.3ms_thread": run(0.0013, True)})
