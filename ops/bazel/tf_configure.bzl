"""Repository rule `tf_configure`: exposes the pip-installed TensorFlow to Bazel.

It runs Python (PYTHON_BIN_PATH, else the repo's .venv/bin/python, else python3), reads
tf.sysconfig, symlinks TensorFlow's include dir and libtensorflow_framework.so.2 into
@local_config_tf, and writes a BUILD with two targets:
  :tf_header_lib  - headers and compile defines (-D_GLIBCXX_USE_CXX11_ABI=1, EIGEN_MAX_ALIGN_BYTES)
  :libtensorflow_framework - the shared library to link against (not bundled)
"""

_PY = """
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
print(tf.sysconfig.get_include())
print(tf.sysconfig.get_lib())
print(" ".join(f for f in tf.sysconfig.get_compile_flags() if f.startswith("-D")))
"""

def _python(ctx):
    env = ctx.os.environ.get("PYTHON_BIN_PATH")
    if env:
        return env
    venv = ctx.path(Label("//ops:BUILD")).dirname.dirname.get_child(".venv").get_child("bin").get_child("python")
    if venv.exists:
        return str(venv)
    found = ctx.which("python3")
    if not found:
        fail("tf_configure: no Python found; set PYTHON_BIN_PATH to one with TensorFlow")
    return str(found)

def _tf_configure_impl(ctx):
    res = ctx.execute([_python(ctx), "-c", _PY], quiet = True)
    if res.return_code != 0:
        fail("tf_configure: could not import tensorflow:\n" + res.stderr)
    lines = [l for l in res.stdout.splitlines() if l.strip()]
    include_dir, lib_dir, defines = lines[-3], lines[-2], lines[-1]
    ctx.symlink(include_dir, "include")
    ctx.symlink(lib_dir + "/libtensorflow_framework.so.2", "libtensorflow_framework.so.2")
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**"], exclude = ["include/**/*.py"]),
    includes = ["include"],
    defines = [{defines}],
)

cc_import(
    name = "libtensorflow_framework",
    shared_library = "libtensorflow_framework.so.2",
)
""".format(defines = ", ".join(['"%s"' % d[2:] for d in defines.split(" ") if d])))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
