"""Python gRPC round trip with no model: a generic handler that returns 8 bytes.

Servers: a sync server with TensorFlow imported (threads and all), a bare sync server under
`grpc.optimization_target` none / latency / throughput and `GRPC_POLL_STRATEGY=poll`, and a
`grpc.aio` server. Prints the median round trip (µs) of 400 calls per request size.

Usage: python echo.py
"""
import asyncio
import os
import statistics
import subprocess
import sys
import time
from concurrent import futures

import grpc

SIZES = (100, 77_000)          # 77 KB: one Predict of 128 serialized demo examples


def _options(target: str, limit_key: str) -> list:
  opts = [(limit_key, 64 << 20)]
  return opts + ([("grpc.optimization_target", target)] if target != "none" else [])


def _handler():
  return grpc.method_handlers_generic_handler(
      "e.E", {"M": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"12345678")})


def serve(kind: str, port: int, target: str) -> None:
  if kind == "aio":
    async def run():
      s = grpc.aio.server(options=_options(target, "grpc.max_receive_message_length"))
      s.add_generic_rpc_handlers((_handler(),))
      s.add_insecure_port(f"127.0.0.1:{port}")
      await s.start()
      print("up", flush=True)
      await s.wait_for_termination()
    asyncio.run(run())
    return
  if kind == "sync_tf":
    import tensorflow  # noqa: F401
  s = grpc.server(futures.ThreadPoolExecutor(4),
                  options=_options(target, "grpc.max_receive_message_length"))
  s.add_generic_rpc_handlers((_handler(),))
  s.add_insecure_port(f"127.0.0.1:{port}")
  s.start()
  print("up", flush=True)
  s.wait_for_termination()


def client(port: int, target: str) -> dict:
  ch = grpc.insecure_channel(f"127.0.0.1:{port}",
                             options=_options(target, "grpc.max_send_message_length"))
  call = ch.unary_unary("/e.E/M")
  for _ in range(50):
    call(b"x")
  out = {}
  for size in SIZES:
    payload, lat = b"y" * size, []
    for _ in range(400):
      t0 = time.perf_counter()
      call(payload, timeout=10)
      lat.append(time.perf_counter() - t0)
    out[size] = round(statistics.median(lat) * 1e6, 1)
  ch.close()
  return out


def main() -> None:
  port = 50800
  cases = [("sync_tf", "none", {}), ("aio", "none", {})] + [
      ("sync", t, env) for t in ("none", "latency", "throughput")
      for env in ({}, {"GRPC_POLL_STRATEGY": "poll"})]
  for rep in range(2):
    for kind, target, env in cases:
      port += 1
      p = subprocess.Popen([sys.executable, __file__, "serve", kind, str(port), target],
                           stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
      p.stdout.readline()
      try:
        print(rep, kind, target, env, client(port, target), flush=True)
      finally:
        p.kill()


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
  else:
    main()
