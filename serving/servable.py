"""One loaded model version: a SavedModel in its own TF session, run by signature name.

Loading goes through the TF1 SavedModel loader into a ``tf.compat.v1.Session``, the way
TF Serving's ``SavedModelBundle`` does it: the signature defs name graph tensors, a
request is one ``Session`` callable with no Python tracing, and an export that loads
here uses nothing TF Serving could not load. A call costs ~0.1 ms of overhead instead
of ~1 ms for an eager ``ConcreteFunction`` call.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from ssr_tf.serving.tensors import InputSpec, ServingError, shape_of

log = logging.getLogger("ssr_tf.serving")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def _register_custom_ops() -> None:
  """Registers ssr_tf's fused ops (if ops/_ssr_ops.so is built) so that exports written with
  `ssr_tf export --fused` load; pure-TF exports do not need them. Stock TF Serving cannot
  load fused exports (no custom ops there): that is why the default export is pure TF."""
  from ssr_tf import ops  # pylint: disable=import-outside-toplevel
  ops.is_available()


@dataclasses.dataclass
class OutputSpec:
  """One signature output: graph tensor name and dtype enum."""
  name: str
  tensor: str
  dtype: int


@dataclasses.dataclass
class Signature:
  """A SignatureDef in resolved form."""
  name: str
  method_name: str
  inputs: dict[str, InputSpec]
  outputs: dict[str, OutputSpec]
  proto: meta_graph_pb2.SignatureDef

  def examples_input(self) -> Optional[str]:
    """The input name when the signature takes exactly one DT_STRING [batch] tensor."""
    if len(self.inputs) != 1:
      return None
    (name, spec), = self.inputs.items()
    if spec.dtype == tf.string.as_datatype_enum and (spec.shape is None or len(spec.shape) == 1):
      return name
    return None


def _error_code(e: tf.errors.OpError) -> grpc.StatusCode:
  if isinstance(e, tf.errors.InvalidArgumentError):
    return grpc.StatusCode.INVALID_ARGUMENT
  if isinstance(e, tf.errors.ResourceExhaustedError):
    return grpc.StatusCode.RESOURCE_EXHAUSTED
  if isinstance(e, tf.errors.DeadlineExceededError):
    return grpc.StatusCode.DEADLINE_EXCEEDED
  return grpc.StatusCode.INTERNAL


def _short(message: str, limit: int = 400) -> str:
  """A TF error without its graph-node trailer, control bytes escaped, <= `limit` chars."""
  text = message.strip() or "error"
  if text.startswith("Graph execution error:"):
    text = text[len("Graph execution error:"):].strip() or text
  for marker in ("\n\t [[", "\t [[", " [[{{node", "\n\nStack trace", "\n\nDetected at"):
    text = text.split(marker)[0]
  text = " ".join(text.split("\n")).strip()
  text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
  return text if len(text) <= limit else text[:limit] + "..."


class Servable:
  """A SavedModel version loaded into a private graph + session.

  Args:
    model_name: served name (logs, responses).
    version: integer version (the directory name).
    path: the version directory.
    intra_op_threads: TF intra-op pool size (0 = TF's choice).
    inter_op_threads: TF inter-op pool size (0 = TF's choice).
    tags: MetaGraph tags to load (TF Serving uses "serve").
  """

  def __init__(self, model_name: str, version: int, path: str, intra_op_threads: int = 0,
               inter_op_threads: int = 0, tags: Sequence[str] = ("serve",)):
    self.model_name, self.version, self.path = model_name, version, path
    self.refs = 0                   # in-flight requests (guarded by the manager's lock)
    self._graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                      inter_op_parallelism_threads=inter_op_threads,
                                      allow_soft_placement=True)
    self._session = tf.compat.v1.Session(graph=self._graph, config=config)
    _register_custom_ops()
    level = tf.get_logger().level
    tf.get_logger().setLevel(logging.ERROR)      # the TF1 loader logs a deprecation notice
    try:
      with self._graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
    finally:
      tf.get_logger().setLevel(level)
    self.meta_graph = meta
    self.signatures: dict[str, Signature] = {}
    for name, sd in meta.signature_def.items():
      if name.startswith("__"):          # __saved_model_init_op and friends
        continue
      inputs = {k: InputSpec(k, v.name, v.dtype, shape_of(v.tensor_shape))
                for k, v in sd.inputs.items()}
      outputs = {k: OutputSpec(k, v.name, v.dtype) for k, v in sd.outputs.items()}
      self.signatures[name] = Signature(name, sd.method_name, inputs, outputs, sd)
    if not self.signatures:
      raise ValueError(f"{path}: the SavedModel has no serving signatures")
    self._callables: dict[tuple, tuple[list[str], list[str], object]] = {}
    self._lock = threading.Lock()

  def signature(self, name: str) -> Signature:
    """The named signature (empty name = serving_default); INVALID_ARGUMENT if absent."""
    name = name or "serving_default"
    sig = self.signatures.get(name)
    if sig is None:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"signature '{name}' not found in model {self.model_name} version "
                         f"{self.version}; it has {sorted(self.signatures)}")
    return sig

  def _callable(self, sig: Signature, outputs: Sequence[str]):
    key = (sig.name, tuple(outputs))
    fn = self._callables.get(key)
    if fn is None:
      with self._lock:
        fn = self._callables.get(key)
        if fn is None:
          feeds = sorted(sig.inputs)
          with self._graph.as_default():
            call = self._session.make_callable(
                [sig.outputs[o].tensor for o in outputs],
                [sig.inputs[i].tensor for i in feeds])
          fn = self._callables[key] = (feeds, list(outputs), call)
    return fn

  def run(self, sig: Signature, feeds: dict[str, np.ndarray],
          outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Runs `sig` on validated inputs; TF errors become ServingErrors naming the input."""
    outputs = sorted(sig.outputs) if outputs is None else list(outputs)
    names, outs, call = self._callable(sig, outputs)
    try:
      values = call(*[feeds[n] for n in names])
    except tf.errors.OpError as e:
      subject = (f"input '{names[0]}'" if len(names) == 1 else f"signature '{sig.name}'")
      raise ServingError(_error_code(e), f"{subject}: {_short(e.message)}") from None
    except UnicodeDecodeError as e:
      # TF echoed a non-UTF-8 input value (e.g. an unparsable tf.Example) into its error
      # message and could not build the exception: recover the text, it is a bad input.
      text = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else str(e)
      subject = (f"input '{names[0]}'" if len(names) == 1 else f"signature '{sig.name}'")
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{subject}: {_short(text)}") from None
    return dict(zip(outs, values))

  def close(self) -> None:
    self._session.close()
