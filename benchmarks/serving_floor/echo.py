"""Python gRPC round trip by request size: sync server (with TensorFlow loaded) and grpc.aio server.

Usage: python echo.py client
"""
import asyncio, statistics, subprocess, sys, time
import grpc
from concurrent import futures

def serve_sync_tf(port):
  # sync server in a process that has TensorFlow loaded (threads and all)
  import tensorflow as tf  # noqa
  def handler(req, ctx): return b"12345678"
  h = grpc.method_handlers_generic_handler("e.E", {"M": grpc.unary_unary_rpc_method_handler(handler)})
  s = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 << 20)])
  s.add_generic_rpc_handlers((h,)); s.add_insecure_port(f"127.0.0.1:{port}"); s.start(); print("up", flush=True); s.wait_for_termination()

async def serve_aio(port):
  async def handler(req, ctx): return b"12345678"
  h = grpc.method_handlers_generic_handler("e.E", {"M": grpc.unary_unary_rpc_method_handler(handler)})
  s = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
  s.add_generic_rpc_handlers((h,)); s.add_insecure_port(f"127.0.0.1:{port}"); await s.start(); print("up", flush=True); await s.wait_for_termination()

def client(port):
  ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
  call = ch.unary_unary("/e.E/M")
  for _ in range(50): call(b"x")
  res = {}
  for size in (100, 77_000):
    payload = b"y" * size; lat = []
    for _ in range(400):
      t0 = time.perf_counter(); call(payload, timeout=10); lat.append(time.perf_counter() - t0)
    res[size] = round(statistics.median(lat) * 1e6, 1)
  return res

if __name__ == "__main__":
  if sys.argv[1] == "aio": asyncio.run(serve_aio(int(sys.argv[2])))
  elif sys.argv[1] == "synctf": serve_sync_tf(int(sys.argv[2]))
  else:
    for kind, port in (("aio", 50781), ("synctf", 50782), ("aio", 50783), ("synctf", 50784)):
      p = subprocess.Popen([sys.executable, __file__, kind, str(port)], stdout=subprocess.PIPE, text=True)
      p.stdout.readline()
      try: print(kind, client(port), flush=True)
      finally: p.kill()
