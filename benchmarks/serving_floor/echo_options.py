"""77 KB Python gRPC echo under grpc.optimization_target none/latency/throughput and GRPC_POLL_STRATEGY poll.

Usage: python echo_options.py client
"""
import sys, subprocess, time, statistics, os
from concurrent import futures
import grpc
def serve(port, opt):
  def handler(req, ctx): return b"12345678"
  h = grpc.method_handlers_generic_handler("e.E", {"M": grpc.unary_unary_rpc_method_handler(handler)})
  o = [("grpc.max_receive_message_length", 64 << 20)] + ([("grpc.optimization_target", opt)] if opt != "none" else [])
  s = grpc.server(futures.ThreadPoolExecutor(4), options=o)
  s.add_generic_rpc_handlers((h,)); s.add_insecure_port(f"127.0.0.1:{port}"); s.start(); print("up", flush=True); s.wait_for_termination()
def client(port, opt):
  o = [("grpc.max_send_message_length", 64 << 20)] + ([("grpc.optimization_target", opt)] if opt != "none" else [])
  ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=o)
  call = ch.unary_unary("/e.E/M")
  for _ in range(50): call(b"x")
  lat = []
  payload = b"y" * 77000
  for _ in range(400):
    t0 = time.perf_counter(); call(payload, timeout=10); lat.append(time.perf_counter() - t0)
  return round(statistics.median(lat) * 1e6, 1)
if __name__ == "__main__":
  if sys.argv[1] == "serve": serve(int(sys.argv[2]), sys.argv[3])
  else:
    port = 50800
    for rep in range(2):
      for opt in ("none", "latency", "throughput"):
        for env in ({}, {"GRPC_POLL_STRATEGY": "poll"}):
          port += 1
          p = subprocess.Popen([sys.executable, __file__, "serve", str(port), opt], stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
          p.stdout.readline()
          try: print(opt, env, client(port, opt), flush=True)
          finally: p.kill()
