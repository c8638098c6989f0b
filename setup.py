"""ssr_tf: SSR (explicit-sparsity) ranking models on TensorFlow/Keras 2.

`ops/`, `pipelines/` and `serving/` live at the top of the repository (like the
custom-op and serving projects they follow) but install as `ssr_tf.ops`,
`ssr_tf.pipelines` and `ssr_tf.serving`.
"""
import pathlib

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent


def _requirements(name: str) -> list[str]:
  lines = (ROOT / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith(("#", "-r"))]


core = find_packages(include=["ssr_tf", "ssr_tf.*"])
mapped = {"ssr_tf.ops": "ops", "ssr_tf.pipelines": "pipelines", "ssr_tf.serving": "serving"}
for sub in ("pipelines", "serving"):
  for pkg in find_packages(where=sub):
    mapped[f"ssr_tf.{sub}.{pkg}"] = f"{sub}/{pkg.replace('.', '/')}"

setup(
    name="ssr_tf",
    version="0.1.0",
    description="SSR / MSN ranking models for TensorFlow (Keras 2)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=core + list(mapped),
    package_dir=mapped,
    package_data={"ssr_tf.ops": ["*.so", "cc/*/*.cc", "cc/*/*.h"],
                  "ssr_tf.pipelines": ["mappings/*.yaml"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={"beam": ["apache-beam==2.77.0"], "plot": ["matplotlib"], "test": ["pytest==9.2.0"]},
    entry_points={"console_scripts": ["ssr_tf=ssr_tf.cli:main"]},
)
