"""One loaded model version: a SavedModel in its own TF session, run by signature name.

A version is loaded the way TF Serving's ``LoadSavedModel`` does it, through the C API:
the MetaGraph's GraphDef is imported into a ``tf.compat.v1.Session``'s graph, the
variables are restored by the SavedModel's saver op, the init op runs with the asset
paths fed, and each signature becomes a session callable made from tensor names. No
Python operation objects are built (the TF1 Python loader builds one per graph node,
seconds of interpreter time for a model that serves in milliseconds, which would stall
every request thread of a server loading a new version), and a request is one callable
with no Python tracing: ~0.1 ms of overhead instead of ~1 ms for an eager
``ConcreteFunction`` call. An export that loads here uses nothing TF Serving could not load.
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
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow.python.client import pywrap_tf_session as c_api
from tensorflow.python.framework import c_api_util

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


def _read_meta_graph(path: str, tags: Sequence[str]) -> meta_graph_pb2.MetaGraphDef:
  """The MetaGraphDef of `path`'s saved_model.pb(txt) whose tags are exactly `tags`."""
  pb = os.path.join(path, "saved_model.pb")
  model = saved_model_pb2.SavedModel()
  if tf.io.gfile.exists(pb):
    with tf.io.gfile.GFile(pb, "rb") as f:
      model.ParseFromString(f.read())
  else:
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt"), "r") as f:
      text_format.Parse(f.read(), model)
  for meta in model.meta_graphs:
    if set(meta.meta_info_def.tags) == set(tags):
      return meta
  found = [sorted(m.meta_info_def.tags) for m in model.meta_graphs]
  raise RuntimeError(f"{path}: no MetaGraph with tags {sorted(tags)} (it has {found})")


def _init_op_name(meta: meta_graph_pb2.MetaGraphDef) -> Optional[str]:
  """The SavedModel's init op, looked up as the TF1 loader does (signature, then collections)."""
  sd = meta.signature_def.get("__saved_model_init_op")
  if sd is not None and "__saved_model_init_op" in sd.outputs:
    return sd.outputs["__saved_model_init_op"].name
  for key in ("saved_model_main_op", "legacy_init_op"):
    if key in meta.collection_def:
      nodes = meta.collection_def[key].node_list.value
      if len(nodes) != 1:
        raise RuntimeError(f"expected exactly one SavedModel init op in {key}, found {len(nodes)}")
      return nodes[0]
  return None


def _run_op(session: tf.compat.v1.Session, op: str, feeds: dict[str, str]) -> None:
  """Runs graph node `op` (an op name, or a tensor name to fetch) feeding string scalars."""
  names = list(feeds)
  options = config_pb2.CallableOptions(feed=names)
  if ":" in op:
    options.fetch.append(op)
  else:
    options.target.append(op)
  call = session._make_callable_from_options(options)  # pylint: disable=protected-access
  call(*[np.array(feeds[n].encode(), dtype=object) for n in names])


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
    inter_op_threads: TF inter-op pool size (0 = TF's choice; negative = run a call's
      ops on the calling thread, with no hand-off to a pool).
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
    try:
      meta = self._load(path, tags)
    except BaseException:
      self._session.close()
      raise
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

  def _load(self, path: str, tags: Sequence[str]) -> meta_graph_pb2.MetaGraphDef:
    """Imports the graph into the session, restores the variables, runs the init op."""
    meta = _read_meta_graph(path, tags)
    options = c_api.TF_NewImportGraphDefOptions()
    try:
      with c_api_util.tf_buffer(meta.graph_def.SerializeToString()) as buf:
        results = c_api.TF_GraphImportGraphDefWithResults(
            self._graph._c_graph, buf, options)  # pylint: disable=protected-access
      c_api.TF_DeleteImportGraphDefResults(results)
    finally:
      c_api.TF_DeleteImportGraphDefOptions(options)
    saver = meta.saver_def
    variables = os.path.join(path, "variables", "variables")
    if saver.restore_op_name and tf.io.gfile.exists(variables + ".index"):
      _run_op(self._session, saver.restore_op_name, {saver.filename_tensor_name: variables})
    init_op = _init_op_name(meta)
    if init_op:
      _run_op(self._session, init_op,
              {a.tensor_info.name: os.path.join(path, "assets", a.filename)
               for a in meta.asset_file_def})
    return meta

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
          options = config_pb2.CallableOptions(
              feed=[sig.inputs[i].tensor for i in feeds],
              fetch=[sig.outputs[o].tensor for o in outputs])
          call = self._session._make_callable_from_options(  # pylint: disable=protected-access
              options)
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
