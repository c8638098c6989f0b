"""Builds ops/_ssr_ops.so (the fused ICS / grouped-projection ops) with g++ and tf.sysconfig flags.

Usage: python ops/build.py [--force] [--march=native|portable|<arch>] [-j N]

Each .cc compiles to ops/build/*.o in parallel, then links; nothing is rebuilt when the .so is
newer than every source and was built with the same flags. -march defaults to `native` when the
compiler accepts it, else the portable x86-64 baseline (SSR_OPS_MARCH overrides the choice).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

OPS = pathlib.Path(__file__).resolve().parent
CC = OPS / "cc"
BUILD = OPS / "build"
LIB = OPS / "_ssr_ops.so"


def sources() -> list[pathlib.Path]:
  """The C++ translation units of the CPU library (CUDA sources are compiled by nvcc only)."""
  srcs = sorted(CC.glob("ops/*_ops.cc")) + sorted(CC.glob("kernels/*_kernels.cc"))
  return [s for s in srcs if not s.name.endswith(".cu.cc")]


_SYSCONFIG = ("import json, tensorflow as tf; "
              "print(json.dumps([tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()]))")


def _tf_flags() -> tuple[list[str], list[str]]:
  """tf.sysconfig's compile and link flags, read in a child Python so TF's start-up log lines
  do not clutter `make ops` (they are shown if the import fails)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  res = subprocess.run([sys.executable, "-c", _SYSCONFIG], capture_output=True, text=True,
                       env=env, check=False)
  if res.returncode != 0:
    raise RuntimeError(f"cannot import tensorflow to read tf.sysconfig:\n{res.stderr[-3000:]}")
  cflags, lflags = json.loads(res.stdout.strip().splitlines()[-1])
  return list(cflags), list(lflags)


def _accepts(cxx: str, flag: str) -> bool:
  with tempfile.TemporaryDirectory() as tmp:
    src = pathlib.Path(tmp) / "probe.cc"
    src.write_text("int main() { return 0; }\n")
    res = subprocess.run([cxx, flag, "-c", str(src), "-o", str(pathlib.Path(tmp) / "p.o")],
                         capture_output=True, check=False)
    return res.returncode == 0


def march_flags(cxx: str, choice: str) -> list[str]:
  """-march for this build: 'native' if the compiler takes it, else the portable baseline."""
  if choice == "portable":
    return []
  flag = f"-march={choice}"
  if _accepts(cxx, flag):
    return [flag]
  print(f"ops/build.py: {cxx} rejects {flag}; using the portable baseline", file=sys.stderr)
  return []


def flags(cxx: str, march: str) -> tuple[list[str], list[str]]:
  """(compile flags, link flags): tf.sysconfig's (C++17, CXX11 ABI, include dir) + ours."""
  cflags, lflags = _tf_flags()
  cflags = [f for f in cflags if not f.startswith(("--std=", "-std="))]
  cflags += ["-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-fPIC", "-O3", "-DNDEBUG",
             "-Wno-ignored-attributes", "-Wno-deprecated-declarations", f"-I{CC / 'kernels'}"]
  cflags += march_flags(cxx, march)
  if not any("libtensorflow_framework" in f for f in lflags):
    lflags.append("-l:libtensorflow_framework.so.2")
  return cflags, ["-shared"] + lflags


def _stamp(cflags: list[str], lflags: list[str], cxx: str) -> str:
  return hashlib.sha256("\n".join([cxx] + cflags + lflags).encode()).hexdigest()


def up_to_date(stamp: str) -> bool:
  """True when the .so exists, is newer than every source/header/this script, same flags."""
  stamp_file = BUILD / "flags.sha256"
  if not LIB.exists() or not stamp_file.exists() or stamp_file.read_text() != stamp:
    return False
  deps = list(CC.rglob("*.cc")) + list(CC.rglob("*.h")) + [pathlib.Path(__file__)]
  return LIB.stat().st_mtime >= max(p.stat().st_mtime for p in deps)


def _compile(cxx: str, src: pathlib.Path, cflags: list[str]) -> pathlib.Path:
  obj = BUILD / (src.stem + ".o")
  cmd = [cxx, *cflags, "-c", str(src), "-o", str(obj)]
  res = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if res.returncode != 0:
    raise RuntimeError(f"compile failed: {' '.join(cmd)}\n{res.stderr}")
  return obj


def build(force: bool = False, march: str = "native", jobs: int = 2, verbose: bool = True) -> pathlib.Path:
  """Builds (if needed) and returns the path of ops/_ssr_ops.so."""
  cxx = os.environ.get("CXX", "g++")
  if shutil.which(cxx) is None:
    raise RuntimeError(f"C++ compiler {cxx!r} not found (set CXX)")
  BUILD.mkdir(exist_ok=True)
  with open(BUILD / ".lock", "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)   # concurrent `make ops` runs wait for each other
    cflags, lflags = flags(cxx, march)
    stamp = _stamp(cflags, lflags, cxx)
    if not force and up_to_date(stamp):
      if verbose:
        print(f"ops/build.py: {LIB.relative_to(OPS.parent)} is up to date")
      return LIB
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
      objs = list(pool.map(lambda s: _compile(cxx, s, cflags), sources()))
    tmp = LIB.with_suffix(f".so.tmp{os.getpid()}")
    cmd = [cxx, *(str(o) for o in objs), *lflags, "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
      raise RuntimeError(f"link failed: {' '.join(cmd)}\n{res.stderr}")
    os.replace(tmp, LIB)            # atomic: a concurrent importer never sees half a file
    (BUILD / "flags.sha256").write_text(stamp)
    if verbose:
      march_used = next((f for f in cflags if f.startswith("-march=")), "portable")
      print(f"ops/build.py: built {LIB.relative_to(OPS.parent)} ({march_used}) "
            f"in {time.time() - t0:.1f}s")
  return LIB


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="ops/build.py", description=__doc__.splitlines()[0])
  parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
  parser.add_argument("--march", default=os.environ.get("SSR_OPS_MARCH", "native"),
                      help="native (default), portable, or any -march value")
  parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1))
  args = parser.parse_args(argv)
  try:
    build(force=args.force, march=args.march, jobs=args.jobs)
  except RuntimeError as e:
    print(f"ops/build.py: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
