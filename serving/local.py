"""Scoring through a SavedModel on disk, with no server (`ssr_tf score --saved_model DIR`).

:class:`LocalScorer` has the scoring half of :class:`ssr_tf.serving.client.RankingClient`
(``feature_types``, ``score_examples``, ``score_rows``) and runs the export's own signatures
in-process, loaded the way ``ssr_tf serve`` and TF Serving load them. Offline jobs (backfills,
analysis of a day's logs) get the served model's exact scores without starting a server::

  from ssr_tf.serving.local import LocalScorer
  with LocalScorer("export") as s:            # the newest version under export/
    s.score_rows([{"user_id": 7, "item_id": 42}])["click_prob"]
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from ssr_tf.errors import UserError
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.examples import OUTPUTS
from ssr_tf.serving.manager import list_versions
from ssr_tf.serving.servable import Servable


def resolve_version(path: str, version: Optional[int] = None) -> tuple[int, str]:
  """(version, directory) of a SavedModel: `path` itself when it holds saved_model.pb,
  else its numbered version folder `version` (default: the highest)."""
  if not os.path.isdir(path):
    raise UserError(f"--saved_model {path}: directory not found")
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    name = os.path.basename(os.path.normpath(path))
    here = int(name) if name.isdigit() else 0
    if version is not None and version != here:
      raise UserError(f"--saved_model {path} is one SavedModel (version {here}); "
                      f"--version {version} names another")
    return here, path
  versions = list_versions(path)
  if not versions:
    raise UserError(f"--saved_model {path}: no saved_model.pb in it or in numbered version "
                    "folders under it")
  if version is None:
    version = max(versions)
  if version not in versions:
    raise UserError(f"--saved_model {path}: no version {version}; it has {sorted(versions)}")
  return version, versions[version]


class LocalScorer(examples_lib.ExampleScorer):
  """Scores tf.Examples with an exported ranking model, in this process.

  Args:
    path: a SavedModel directory, or an export base with numbered version folders.
    version: the version folder to load (default: the highest).
    threads: TF intra-op threads (0 = TF's choice).
  """

  def __init__(self, path: str, version: Optional[int] = None, threads: int = 0):
    self.version, self.path = resolve_version(path, version)
    try:
      self.servable = Servable("local", self.version, self.path, intra_op_threads=threads)
    except Exception as e:  # pylint: disable=broad-except  (any load failure: name the path)
      raise UserError(f"--saved_model {self.path}: cannot load it as a SavedModel "
                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    self.signature = self.servable.signature("serving_default")
    self.input_name = self.signature.examples_input()
    if self.input_name is None:
      raise UserError(f"--saved_model {self.path}: serving_default must take one DT_STRING "
                      "[batch] input of serialized tf.Examples (an `ssr_tf export`)")
    self.outputs = [o for o in OUTPUTS if o in self.signature.outputs]
    if "click_prob" not in self.outputs:
      raise UserError(f"--saved_model {self.path}: serving_default has no click_prob output "
                      f"(outputs: {sorted(self.signature.outputs)})")

  def close(self) -> None:
    self.servable.close()

  def output_names(self) -> list[str]:
    return list(self.outputs)

  def feature_types(self) -> dict[str, examples_lib.FeatureType]:
    """Feature dtypes / list-ness from the export's ``predict_raw`` signature."""
    raw = self.servable.signatures.get("predict_raw")
    return examples_lib.feature_types(raw.inputs) if raw is not None else {}

  def score_examples(self, examples: Sequence[Any]) -> dict[str, np.ndarray]:
    """click_prob (/ pay_prob) for tf.Examples (protos or serialized bytes); a record the
    model cannot parse raises ServingError (INVALID_ARGUMENT) naming the input."""
    arr = np.empty(len(examples), dtype=object)
    arr[:] = [e if isinstance(e, bytes) else e.SerializeToString() for e in examples]
    return self.servable.run(self.signature, {self.input_name: arr}, self.outputs)
