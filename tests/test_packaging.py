"""The setup.py layout mapping, proven outside the editable install: build a wheel, install
it into a fresh venv, and import every module of ssr_tf, ssr_tf.ops, ssr_tf.pipelines and
ssr_tf.serving from there (top-level ops/, pipelines/ and serving/ become ssr_tf.*)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MAPPED = {"ssr_tf": "ssr_tf", "ssr_tf/ops": "ops", "ssr_tf/pipelines": "pipelines",
          "ssr_tf/serving": "serving"}
pytestmark = pytest.mark.slow


def source_modules() -> set[str]:
  """Dotted names the wheel must hold: every .py under ssr_tf/, ops/ (top level: its
  subfolders hold C++ and Bazel files), pipelines/ and serving/, under its ssr_tf name."""
  names = set()
  for package, folder in MAPPED.items():
    root = REPO / folder
    files = root.glob("*.py") if folder == "ops" else root.rglob("*.py")
    for path in files:
      rel = path.relative_to(root).with_suffix("")
      if folder == "ssr_tf" and rel.parts[0] in ("ops", "pipelines", "serving"):
        continue
      parts = package.split("/") + [p for p in rel.parts if p != "__init__"]
      names.add(".".join(parts))
  return names


def _run(cmd: list[str], cwd, timeout: int = 600) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PIP_NO_INDEX="1",
             PIP_DISABLE_PIP_VERSION_CHECK="1")
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc


# Imports each named module (optional extras such as apache-beam are imported lazily
# inside functions, so every module imports without them) and reports where it came from.
IMPORT_ALL = r"""
import importlib, json, sys
report = {"files": {}, "failed": {}}
for name in json.loads(sys.argv[1]):
  try:
    report["files"][name] = importlib.import_module(name).__file__
  except Exception as e:  # noqa: BLE001  (report every failure, not just the first)
    report["failed"][name] = repr(e)
print(json.dumps(report))
"""


def test_wheel_installs_the_mapping_and_every_module_imports(tmp_path):
  # Build from a copy of the package sources, so no build/ or egg-info lands in the tree.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.py", "README.md", "requirements.txt"):
    shutil.copy(REPO / name, src / name)
  for folder in set(MAPPED.values()):
    shutil.copytree(REPO / folder, src / folder,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.o"))
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", str(dist)], cwd=src)
  wheel, = dist.glob("ssr_tf-*.whl")
  listed = zipfile.ZipFile(wheel).namelist()
  in_wheel = {n[:-3].replace("/__init__", "").replace("/", ".") for n in listed
              if n.endswith(".py")}
  want = source_modules()
  assert in_wheel == want, (sorted(want - in_wheel), sorted(in_wheel - want))
  assert not [n for n in listed if n.split("/")[0] in ("ops", "pipelines", "serving")]

  # A fresh venv: the wheel installed with pip (no dependencies, no index), then the
  # dependencies made visible through a .pth line naming this venv's site-packages (a path
  # entry, so that folder's own .pth files, the editable install's finder among them, are
  # not run there).
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
  python = venv / "bin" / "python"
  _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
       cwd=tmp_path)
  site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=tmp_path).stdout.strip()
  (pathlib.Path(site) / "_ssr_tf_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

  names = sorted(n for n in want if not n.endswith(".__main__"))   # runs the CLI: below
  report = json.loads(_run([str(python), "-c", IMPORT_ALL, json.dumps(names)],
                           cwd=tmp_path).stdout.strip().splitlines()[-1])
  assert report["failed"] == {}
  assert sorted(report["files"]) == names
  outside = {n: f for n, f in report["files"].items() if not f.startswith(site)}
  assert not outside, f"imported from outside the installed wheel: {outside}"
  # The console script and `python -m ssr_tf` of the wheel run from there too.
  _run([str(venv / "bin" / "ssr_tf"), "--help"], cwd=tmp_path)
  _run([str(python), "-m", "ssr_tf", "--help"], cwd=tmp_path)
