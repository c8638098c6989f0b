"""Prints the Markdown configuration reference from the config dataclasses' docstrings.

Usage: python scripts/config_reference.py [--write README.md]
With --write, replaces the block between the config-reference markers in that file.
"""
import dataclasses
import re
import sys

import ssr_tf  # noqa: F401
from ssr_tf import config, features
from ssr_tf.models import registry


def attributes(cls) -> dict[str, str]:
  doc = cls.__doc__ or ""
  out, key = {}, None
  for line in doc.split("Attributes:", 1)[-1].splitlines():
    m = re.match(r"\s{4}(\w+): (.*)", line)
    if m:
      key = m.group(1)
      out[key] = m.group(2).strip()
    elif key and line.strip():
      out[key] += " " + line.strip()
  return out


def table(cls, prefix: str) -> str:
  docs = attributes(cls)
  rows = ["| key | default | meaning |", "|---|---|---|"]
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(f.type) or f.name in ("features",):
      continue
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    rows.append(f"| `{prefix}{f.name}` | `{default!r}` | {docs.get(f.name, '')} |")
  return "\n".join(rows)


def main() -> int:
  parts = [f"#### `data`\n\n{table(config.DataConfig, 'data.')}",
           f"#### `model`\n\n{table(config.ModelConfig, 'model.')}"]
  for name, entry in sorted(registry.load_all().items()):
    parts.append(f"#### `model.backbone` when `model.name: {name}` ({entry.doc})\n\n"
                 f"{table(entry.config_cls, 'model.backbone.')}")
  parts.append(f"#### `train`\n\n{table(config.TrainConfig, 'train.')}")
  if hasattr(config, "DistributionConfig"):
    parts.append(f"#### `distribution`\n\n{table(config.DistributionConfig, 'distribution.')}")
  parts.append(f"#### Feature spec entries (`features: [...]` in spec.yaml)\n\n"
               f"{table(features.Feature, '')}")
  text = "\n\n".join(parts)
  if len(sys.argv) == 3 and sys.argv[1] == "--write":
    path = sys.argv[2]
    doc = open(path).read()
    start = doc.index("<!-- config-reference:start")
    start = doc.index("-->", start) + 3
    end = doc.index("<!-- config-reference:end -->")
    open(path, "w").write(doc[:start] + "\n" + text + "\n" + doc[end:])
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
