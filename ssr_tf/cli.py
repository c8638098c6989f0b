"""`ssr_tf` command line: one entry point, sub-commands implemented in their own modules.

Each sub-command is ``module:function`` taking the remaining argv and returning an exit
code; modules are imported only when their command runs, so `ssr_tf --help` is instant.
A :class:`ssr_tf.errors.UserError` prints one line and exits 2 (set SSR_TF_TRACEBACK=1
for the traceback).
"""
from __future__ import annotations

import importlib
import os
import sys

import ssr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ssr_tf.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ssr_tf.training:main", "train a model: --config CFG.yaml [--set k=v ...]"),
    "evaluate": ("ssr_tf.evaluation:main", "AUC, GAUC, LogLoss, NE, calibration per task"),
    "compare": ("ssr_tf.comparison:main", "paired DeLong test: is A's AUC above B's?"),
    "export": ("ssr_tf.export:main", "write a TF-Serving SavedModel: --config CFG --output DIR"),
    "serve": ("ssr_tf.serving.server:main", "TF Serving protocol gRPC server"),
    "score": ("ssr_tf.serving.client:main", "score a file through a server or an export on disk"),
    "analyze": ("ssr_tf.analysis:main", "sparsity and view-diversity analysis of a checkpoint"),
}
GROUPS: dict[str, dict[str, tuple[str, str]]] = {
    "data": {
        "synth": ("ssr_tf.synth:main", "synthetic TFRecords with oracle probabilities"),
        "synth_criteo": ("ssr_tf.synth_criteo:main",
                         "Criteo-format TSV at any scale, Zipf ids"),
        "convert": ("ssr_tf.pipelines.convert:main", "Criteo/Avazu/Taobao/CSV -> TFRecord + spec"),
    },
    "bench": {
        "train": ("ssr_tf.bench.train:main", "training examples/s for ssr_s, ssr_d, dnn"),
        "pipeline": ("ssr_tf.bench.pipeline:main", "TFRecord parse rate vs training rate"),
        "ops": ("ssr_tf.ops.bench:main", "fused ICS op vs composed TF vs XLA"),
        "serving": ("ssr_tf.serving.bench:main", "gRPC latency / QPS over loopback"),
        "context": ("ssr_tf.serving.bench_context:main",
                    "one request as context + candidates vs flat: model and end to end"),
        "convert": ("ssr_tf.pipelines.bench:main", "converter rows/s"),
        "distributed": ("ssr_tf.bench.distributed:main", "strategies and checkpoint timing"),
        "memory": ("ssr_tf.bench.memory:main", "PKM memory scaling: examples/s vs slots"),
        "scale": ("ssr_tf.bench.scale:main", "examples/s and peak RSS vs embedding rows"),
        "hooks": ("ssr_tf.bench.hooks:main", "TensorBoard per-batch hook: stock vs ours"),
        "quality": ("ssr_tf.bench.quality:main", "paper reproduction suites (Tables 3-5, Fig. 3)"),
        "study": ("ssr_tf.bench.study:main",
                  "quality runs across data sets: gaps with seed-paired intervals"),
        "ics_start": ("ssr_tf.bench.ics_start:main",
                      "ICS zeros and dead views at initialisation and early training"),
    },
}


def _usage() -> str:
  lines = ["usage: ssr_tf COMMAND [args]  (ssr_tf COMMAND --help for its flags)", "", "commands:"]
  for name, (_, doc) in COMMANDS.items():
    lines.append(f"  {name:<18}{doc}")
  for group, subs in GROUPS.items():
    for name, (_, doc) in subs.items():
      lines.append(f"  {group + ' ' + name:<18}{doc}")
  return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, list[str], str]:
  if not argv or argv[0] in ("-h", "--help", "help"):
    return "", [], ""
  head, rest = argv[0], argv[1:]
  if head in COMMANDS:
    return COMMANDS[head][0], rest, f"ssr_tf {head}"
  if head in GROUPS:
    if rest and rest[0] in GROUPS[head]:
      return GROUPS[head][rest[0]][0], rest[1:], f"ssr_tf {head} {rest[0]}"
    raise UserError(f"'ssr_tf {head}' needs one of: {', '.join(GROUPS[head])}")
  raise UserError(f"unknown command {head!r}; run 'ssr_tf --help'")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    target, rest, prog = _resolve(argv)
    if not target:
      print(_usage())
      return 0
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    return int(fn(rest, prog=prog) or 0)
  except UserError as e:
    if os.environ.get("SSR_TF_TRACEBACK"):
      raise
    print(f"ssr_tf: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == "__main__":
  sys.exit(main())
