"""Transport-independent request handling shared by the gRPC and REST front ends.

:class:`ServingCore` turns TF Serving request protos into session calls on the right
model version (through the batcher) and builds the response protos. Every failure is a
:class:`~ssr_tf.serving.tensors.ServingError` carrying the gRPC status code.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Optional, Sequence

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, input_pb2, model_pb2, predict_pb2,
                                     prediction_log_pb2, regression_pb2)

from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.batching import Batcher
from ssr_tf.serving.manager import ModelManager
from ssr_tf.serving.servable import (CLASSIFY_METHOD, REGRESS_METHOD, WARMUP_FILE, Servable,
                                     Signature)
from ssr_tf.serving.tensors import (ServingError, check_feeds, invalid, ndarray_to_tensor,
                                    tensor_to_ndarray)

log = logging.getLogger("ssr_tf.serving")

WARMUP_BATCH_SIZES = (1, 32, 128, 512)
MAX_WARMUP_RECORDS = 1000


def raw_signature(servable: Servable) -> Optional[Signature]:
  """The per-feature signature (``predict_raw`` or another non-tf.Example one), if any."""
  if "predict_raw" in servable.signatures:
    return servable.signatures["predict_raw"]
  for sig in servable.signatures.values():
    if sig.examples_input() is None:
      return sig
  return None


class ServingCore:
  """Resolves model versions and runs Predict / Classify / Regress / metadata / status.

  Args:
    manager: the model's version manager.
    batcher: merges concurrent requests; None runs every request on its own.
    max_request_rows: larger requests fail with RESOURCE_EXHAUSTED.
  """

  def __init__(self, manager: ModelManager, batcher: Optional[Batcher],
               max_request_rows: int = 8192):
    self.manager, self.batcher, self.max_request_rows = manager, batcher, max_request_rows

  # -- helpers -------------------------------------------------------------------------
  def acquire(self, spec: model_pb2.ModelSpec) -> Servable:
    """The servable named by a ModelSpec (NOT_FOUND for unknown name/version/label)."""
    if spec.version_label:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"Servable not found for request: version label "
                         f"'{spec.version_label}' of model {spec.name} (this server has no "
                         "version labels; use a version number or none for the latest)")
    version = spec.version.value if spec.HasField("version") else None
    return self.manager.acquire(spec.name, version)

  def infer(self, servable: Servable, sig: Signature, feeds: dict[str, np.ndarray], rows: int,
            deadline: Optional[float] = None) -> dict[str, np.ndarray]:
    """Runs validated inputs through the batcher (or directly) and returns all outputs."""
    if self.batcher is None or rows == 0 or rows > self.batcher.max_batch_size:
      return servable.run(sig, feeds)
    return self.batcher.run(servable, sig, feeds, rows, deadline)

  @staticmethod
  def _fill_spec(out: model_pb2.ModelSpec, servable: Servable, sig_name: str = "") -> None:
    out.name = servable.model_name
    out.version.value = servable.version
    if sig_name:
      out.signature_name = sig_name

  # -- Predict -------------------------------------------------------------------------
  def predict(self, request: predict_pb2.PredictRequest, deadline: Optional[float] = None
              ) -> predict_pb2.PredictResponse:
    servable = self.acquire(request.model_spec)
    try:
      return self.predict_on(servable, request, deadline)
    finally:
      self.manager.release(servable)

  def predict_on(self, servable: Servable, request: predict_pb2.PredictRequest,
                 deadline: Optional[float] = None) -> predict_pb2.PredictResponse:
    sig = servable.signature(request.model_spec.signature_name)
    feeds = {name: tensor_to_ndarray(name, tp) for name, tp in request.inputs.items()}
    if examples_lib.is_context_signature(sig):       # one context + N candidates: not merged
      examples_lib.check_context_feeds(servable, sig.name, feeds, self.max_request_rows)
      wanted = self._output_filter(sig, request.output_filter)
      out = servable.run(sig, feeds)
    else:
      rows = check_feeds(sig.name, sig.inputs, feeds, self.max_request_rows)
      wanted = self._output_filter(sig, request.output_filter)
      out = self.infer(servable, sig, feeds, rows, deadline)
    resp = predict_pb2.PredictResponse()
    self._fill_spec(resp.model_spec, servable, sig.name)
    for name in wanted:
      ndarray_to_tensor(out[name], resp.outputs[name])
    return resp

  @staticmethod
  def _output_filter(sig: Signature, names: Sequence[str]) -> list[str]:
    if not names:
      return sorted(sig.outputs)
    for n in names:
      if n not in sig.outputs:
        raise invalid(f"output_filter '{n}' is not an output of signature '{sig.name}'; it "
                      f"has {sorted(sig.outputs)}")
    return list(dict.fromkeys(names))

  # -- Classify / Regress on tf.Example ------------------------------------------------
  @staticmethod
  def serialized_examples(inp: input_pb2.Input) -> list[bytes]:
    """Serialized tf.Examples of an Input (context features merged into each example)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
      return [e.SerializeToString() for e in inp.example_list.examples]
    if kind == "example_list_with_context":
      ctx = inp.example_list_with_context.context
      out = []
      for e in inp.example_list_with_context.examples:
        merged = example_pb2.Example()
        merged.CopyFrom(ctx)
        merged.MergeFrom(e)          # the example's own features win
        out.append(merged.SerializeToString())
      return out
    raise invalid("input: Input is empty; set example_list or example_list_with_context")

  def _run_examples(self, servable: Servable, spec: model_pb2.ModelSpec, inp: input_pb2.Input,
                    deadline: Optional[float]) -> tuple[Signature, dict[str, np.ndarray]]:
    sig = servable.signature(spec.signature_name)
    routed = examples_lib.context_feeds(servable, sig, inp, self.max_request_rows)
    if routed is not None:                           # ExampleListWithContext, context export
      return sig, servable.run(*routed)
    name = sig.examples_input()
    if name is None:
      raise invalid(f"signature '{sig.name}' does not take serialized tf.Examples (its inputs "
                    f"are {sorted(sig.inputs)}); use Predict")
    data = self.serialized_examples(inp)
    arr = np.empty(len(data), dtype=object)
    arr[:] = data
    feeds = {name: arr}
    rows = check_feeds(sig.name, sig.inputs, feeds, self.max_request_rows)
    return sig, self.infer(servable, sig, feeds, rows, deadline)

  @staticmethod
  def _per_row(sig: Signature, out: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    v = np.asarray(out[name])
    if v.ndim == 2 and v.shape[1] == 1:
      v = v[:, 0]
    if v.ndim != 1:
      raise invalid(f"signature '{sig.name}': output '{name}' has shape {list(v.shape)}, "
                    "one value per example is needed for Classify/Regress")
    return v

  def classify(self, request: classification_pb2.ClassificationRequest,
               deadline: Optional[float] = None) -> classification_pb2.ClassificationResponse:
    servable = self.acquire(request.model_spec)
    try:
      return self.classify_on(servable, request, deadline)
    finally:
      self.manager.release(servable)

  def classify_on(self, servable: Servable, request: classification_pb2.ClassificationRequest,
                  deadline: Optional[float] = None) -> classification_pb2.ClassificationResponse:
    """Classify: a classify signature's classes/scores, or for a predict signature one
    class per output (label = output name, score = its probability)."""
    sig, out = self._run_examples(servable, request.model_spec, request.input, deadline)
    resp = classification_pb2.ClassificationResponse()
    self._fill_spec(resp.model_spec, servable, sig.name)
    result = resp.result
    if sig.method_name == CLASSIFY_METHOD:
      scores = out.get("scores")
      classes = out.get("classes")
      n = len(scores if scores is not None else classes)
      for i in range(n):
        c = result.classifications.add()
        k = scores.shape[1] if scores is not None else classes.shape[1]
        for j in range(k):
          cls = c.classes.add()
          if classes is not None:
            cls.label = classes[i][j].decode() if isinstance(classes[i][j], bytes) else str(classes[i][j])
          if scores is not None:
            cls.score = float(scores[i][j])
      return resp
    names = sorted(sig.outputs)
    cols = [self._per_row(sig, out, n) for n in names]
    for i in range(len(cols[0]) if cols else 0):
      c = result.classifications.add()
      for n, col in zip(names, cols):
        cls = c.classes.add()
        cls.label, cls.score = n, float(col[i])
    return resp

  def regress(self, request: regression_pb2.RegressionRequest,
              deadline: Optional[float] = None) -> regression_pb2.RegressionResponse:
    servable = self.acquire(request.model_spec)
    try:
      return self.regress_on(servable, request, deadline)
    finally:
      self.manager.release(servable)

  def regress_on(self, servable: Servable, request: regression_pb2.RegressionRequest,
                 deadline: Optional[float] = None) -> regression_pb2.RegressionResponse:
    """Regress: a regress signature's ``outputs``; for a predict signature its only
    output, or ``click_prob`` (the primary task) when it has several."""
    sig, out = self._run_examples(servable, request.model_spec, request.input, deadline)
    if sig.method_name == REGRESS_METHOD and "outputs" in out:
      name = "outputs"
    elif len(sig.outputs) == 1:
      name = next(iter(sig.outputs))
    elif "click_prob" in sig.outputs:
      name = "click_prob"
    else:
      raise invalid(f"signature '{sig.name}' has outputs {sorted(sig.outputs)}; Regress needs "
                    "exactly one (or click_prob); use Predict")
    resp = regression_pb2.RegressionResponse()
    self._fill_spec(resp.model_spec, servable, sig.name)
    for v in self._per_row(sig, out, name):
      resp.result.regressions.add().value = float(v)
    return resp

  # -- metadata / status ---------------------------------------------------------------
  def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
               ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.metadata_field:
      raise invalid("GetModelMetadataRequest must specify at least one metadata_field "
                    "(signature_def)")
    for f in request.metadata_field:
      if f != "signature_def":
        raise invalid(f"metadata_field '{f}' is not supported; use signature_def")
    servable = self.acquire(request.model_spec)
    try:
      resp = get_model_metadata_pb2.GetModelMetadataResponse()
      self._fill_spec(resp.model_spec, servable)
      smap = get_model_metadata_pb2.SignatureDefMap()
      for name, sig in servable.signatures.items():
        smap.signature_def[name].CopyFrom(sig.proto)
      resp.metadata["signature_def"].Pack(smap)
      return resp
    finally:
      self.manager.release(servable)

  def status(self, request: get_model_status_pb2.GetModelStatusRequest
             ) -> get_model_status_pb2.GetModelStatusResponse:
    spec = request.model_spec
    if spec.version_label:
      raise ServingError(grpc.StatusCode.NOT_FOUND,
                         f"version label '{spec.version_label}' is not configured")
    version = spec.version.value if spec.HasField("version") else None
    resp = get_model_status_pb2.GetModelStatusResponse()
    for st in self.manager.status(spec.name, version):
      mvs = resp.model_version_status.add()
      mvs.version = st.version
      mvs.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
      mvs.status.error_code = st.error_code.value[0]
      mvs.status.error_message = st.error_message
    return resp

  # -- warm-up -------------------------------------------------------------------------
  def warmup(self, servable: Servable) -> None:
    """Warms a freshly loaded version before it takes traffic.

    Replays ``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecords, as TF
    Serving does; a failing record fails the load). Without that file, runs every
    signature on synthetic rows at a few batch sizes (failures only logged).
    """
    t0 = time.monotonic()
    path = os.path.join(servable.path, WARMUP_FILE)
    if os.path.isfile(path):
      n = self._replay_warmup(servable, path)
      log.info("Warm-up of version %d: replayed %d records from %s in %.2f s",
               servable.version, n, WARMUP_FILE, time.monotonic() - t0)
      return
    raw = raw_signature(servable)
    types = examples_lib.feature_types(raw.inputs) if raw is not None else {}
    runs = 0
    for sig in servable.signatures.values():
      for rows in WARMUP_BATCH_SIZES:
        name = sig.examples_input()
        if name is not None:
          ex = examples_lib.make_example(examples_lib.synthetic_rows(types, 1)[0], types)
          feeds = {name: np.full(rows, ex.SerializeToString(), dtype=object)}
        else:
          feeds = examples_lib.zero_feeds(sig.inputs, rows)
        try:
          servable.run(sig, feeds)
          runs += 1
        except ServingError as e:
          log.warning("Warm-up of signature '%s' (version %d) failed: %s", sig.name,
                      servable.version, e.message)
          break
    log.info("Warm-up of version %d: %d synthetic runs in %.2f s", servable.version, runs,
             time.monotonic() - t0)

  def _replay_warmup(self, servable: Servable, path: str) -> int:
    import tensorflow as tf
    n = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
      plog = prediction_log_pb2.PredictionLog.FromString(record)
      kind = plog.WhichOneof("log_type")
      if kind == "predict_log":
        self.predict_on(servable, plog.predict_log.request)
      elif kind == "classify_log":
        self.classify_on(servable, plog.classify_log.request)
      elif kind == "regress_log":
        self.regress_on(servable, plog.regress_log.request)
      else:
        raise ValueError(f"warm-up record {n}: log type {kind!r} is not supported")
      n += 1
    return n
