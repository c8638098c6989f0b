"""Builds of the op library: ops/build.py, nvcc compile-only of the CUDA sources, Bazel.

Each toolchain test skips, with the reason, when its tool is not installed.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
KERNELS = OPS / "cc" / "kernels"
_spec = importlib.util.spec_from_file_location("ssr_ops_build", OPS / "build.py")
ops_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ops_build)


def _tf_include() -> str:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.sysconfig.get_include()


def test_build_lists_sources_and_is_up_to_date_after_make_ops():
  names = {p.name for p in ops_build.sources()}
  assert {"ssr_ops.cc", "ssr_ics_kernels.cc", "ssr_block_fusion_kernels.cc"} <= names
  assert not any(n.endswith(".cu.cc") for n in names)
  if not ops_build.LIB.exists():
    pytest.skip(f"{ops_build.LIB} not built (run `make ops`)")
  out = subprocess.run([sys.executable, str(OPS / "build.py")], capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "up to date" in out.stdout or "built" in out.stdout


def test_march_falls_back_to_portable_when_rejected():
  assert ops_build.march_flags("g++", "portable") == []
  assert ops_build.march_flags("g++", "no-such-cpu-xyz") == []


def test_cpu_kernel_bench_harness_builds_and_runs(tmp_path):
  exe = tmp_path / "ics_cpu_bench"
  out = subprocess.run(["g++", "-O2", "-std=c++17", f"-I{KERNELS}",
                        str(OPS / "harness" / "ics_cpu_bench.cc"), "-o", str(exe)],
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  run = subprocess.run([str(exe), "64", "3", "33", "2"], capture_output=True, text=True,
                       timeout=60, check=True)
  assert "fwd+bwd" in run.stdout and "GB/s" in run.stdout


def _nvcc() -> str:
  nvcc = shutil.which("nvcc")
  if nvcc is None:
    pytest.skip("nvcc not on PATH: the CUDA kernels cannot be compile-checked here")
  return nvcc


def test_cuda_kernels_compile_with_nvcc(tmp_path):
  nvcc = _nvcc()
  cmd = [nvcc, "-std=c++17", "-c", "-x", "cu", "-DGOOGLE_CUDA=1", "-DEIGEN_MAX_ALIGN_BYTES=64",
         "-D_GLIBCXX_USE_CXX11_ABI=1", "--expt-relaxed-constexpr", "-arch=sm_90",
         "-Xcompiler", "-Wno-deprecated-declarations", f"-I{_tf_include()}", f"-I{KERNELS}",
         str(KERNELS / "ssr_ics_kernels.cu.cc"), "-o", str(tmp_path / "k.o")]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "k.o").stat().st_size > 0


def test_cuda_harness_compiles_and_runs_when_a_gpu_is_present(tmp_path):
  nvcc = _nvcc()
  exe = tmp_path / "ics_harness"
  cmd = [nvcc, "-O3", "-std=c++17", "-arch=sm_90", f"-I{KERNELS}",
         str(OPS / "harness" / "ics_harness.cu"), "-o", str(exe)]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  if shutil.which("nvidia-smi") is None or subprocess.run(
      ["nvidia-smi", "-L"], capture_output=True, check=False).returncode != 0:
    pytest.skip("compiled; no GPU here to run the harness on")
  run = subprocess.run([str(exe), "1024"], capture_output=True, text=True, timeout=120,
                       check=False)
  assert run.returncode == 0 and "OK" in run.stdout, run.stdout + run.stderr


@pytest.mark.slow
def test_bazel_builds_the_same_library(tmp_path):
  bazel = shutil.which("bazel")
  if bazel is None:
    pytest.skip("bazel not installed (apt-get install bazel-bootstrap to run this)")
  env = {**os.environ, "PYTHON_BIN_PATH": sys.executable}
  base = [bazel, "--batch"]
  flags = ["--symlink_prefix=/", "--spawn_strategy=local", "-c", "opt"]
  out = subprocess.run([*base, "build", *flags, "//ops:_ssr_ops.so"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  bin_dir = subprocess.run([*base, "info", *flags, "bazel-bin"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300, check=True).stdout.strip()
  lib = pathlib.Path(bin_dir) / "ops" / "_ssr_ops.so"
  assert lib.exists(), lib
  code = ("import numpy as np, tensorflow as tf; from ssr_tf import ops; "
          "from ssr_tf.layers.ics import ics_tf; assert ops.is_available(), ops.load_error(); "
          "z = tf.random.normal([3, 2, 9]); a = tf.fill([2, 5], 0.2); g = tf.ones([2, 9]); "
          "np.testing.assert_allclose(ops.ics(z, a, g), ics_tf(z, a, g), atol=1e-6); print('ok')")
  run = subprocess.run([sys.executable, "-c", code], env={**env, "SSR_TF_OPS_LIB": str(lib)},
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
