"""TF Serving's REST API (``/v1/models/...``) over the same core as the gRPC server.

* ``GET  /v1/models/NAME[/versions/V]``            -> GetModelStatus as JSON
* ``GET  /v1/models/NAME[/versions/V]/metadata``   -> GetModelMetadata as JSON
* ``POST /v1/models/NAME[/versions/V]:predict``    -> ``{"instances": [...]}`` (row format)
  or ``{"inputs": ...}`` (columnar); binary strings as ``{"b64": "..."}``
* ``POST /v1/models/NAME[/versions/V]:classify`` / ``:regress`` -> ``{"examples": [{feature:
  value}, ...], "context": {...}}``

Errors are ``{"error": "..."}`` with an HTTP status derived from the gRPC code. Bodies come
with ``Content-Length`` or ``Transfer-Encoding: chunked``; a body that is not JSON, or nests
deeper than Python can parse, is a 400.
"""
from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import time
from typing import Any

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, regression_pb2)

from ssr_tf.errors import DataError
from ssr_tf.serving import examples as examples_lib
from ssr_tf.serving.core import ServingCore, raw_signature
from ssr_tf.serving.tensors import (ServingError, check_feeds, invalid, json_to_ndarray,
                                    ndarray_to_json)

log = logging.getLogger("ssr_tf.serving")

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|"
                   r"/labels/(?P<label>[^/:]+))?(?:(?P<meta>/metadata)|:(?P<verb>[a-z]+))?/?$")
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
}


def _spec(m: re.Match) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=m["name"])
  if m["version"]:
    spec.version.value = int(m["version"])
  if m["label"]:
    spec.version_label = m["label"]
  return spec


class RestFrontEnd:
  """Maps REST calls to ServingCore calls; owns the in-flight counter used for draining."""

  def __init__(self, core: ServingCore, max_body_bytes: int, request_timeout_s: float = 30.0):
    self.core, self.max_body_bytes = core, max_body_bytes
    self.request_timeout_s = request_timeout_s
    self.in_flight = 0
    self.draining = False          # set on SIGTERM: new requests get 503
    self._lock = threading.Lock()

  # -- verbs ---------------------------------------------------------------------------
  def get(self, m: re.Match) -> Any:
    spec = _spec(m)
    if m["meta"]:
      req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                           metadata_field=["signature_def"])
      resp = self.core.metadata(req)
      smap = get_model_metadata_pb2.SignatureDefMap()
      resp.metadata["signature_def"].Unpack(smap)
      return {"model_spec": json_format.MessageToDict(resp.model_spec,
                                                      preserving_proto_field_name=True),
              "metadata": {"signature_def": json_format.MessageToDict(
                  smap, preserving_proto_field_name=True)}}
    if m["verb"]:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"use POST for :{m['verb']}")
    resp = self.core.status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
    return json_format.MessageToDict(resp, always_print_fields_with_no_presence=True,
                                      preserving_proto_field_name=True)

  def post(self, m: re.Match, body: Any) -> Any:
    verb = m["verb"]
    if verb not in ("predict", "classify", "regress"):
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"unknown verb ':{verb}'; use :predict, :classify or :regress")
    if not isinstance(body, dict):
      raise invalid("request body must be a JSON object")
    spec = _spec(m)
    spec.signature_name = str(body.get("signature_name", ""))
    deadline = time.monotonic() + self.request_timeout_s
    if verb == "predict":
      return self._predict(spec, body, deadline)
    return self._examples_verb(verb, spec, body, deadline)

  def _predict(self, spec: model_pb2.ModelSpec, body: dict, deadline: float) -> Any:
    core = self.core
    servable = core.acquire(spec)
    try:
      sig = servable.signature(spec.signature_name)
      names = sorted(sig.inputs)
      if ("instances" in body) == ("inputs" in body):
        raise invalid("request must have exactly one of 'instances' (row format) or "
                      "'inputs' (columnar format)")
      row_format = "instances" in body
      if row_format:
        inst = body["instances"]
        if not isinstance(inst, list):
          raise invalid("'instances' must be a list")
        if all(isinstance(i, dict) and not (set(i) == {"b64"}) for i in inst) and inst:
          values = {}
          for n in names:
            if any(n not in i for i in inst):
              raise invalid(f"input '{n}' is missing from an instance; signature "
                            f"'{sig.name}' takes {names}")
            values[n] = [i[n] for i in inst]
          for i in inst:
            for k in i:
              if k not in sig.inputs:
                raise invalid(f"input '{k}' is not an input of signature '{sig.name}'; it "
                              f"takes {names}")
        elif len(names) == 1:
          values = {names[0]: inst}
        else:
          raise invalid(f"signature '{sig.name}' takes {names}: each instance must be an "
                        "object with those keys")
      else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
          values = inputs
        elif len(names) == 1:
          values = {names[0]: inputs}
        else:
          raise invalid(f"signature '{sig.name}' takes {names}: 'inputs' must be an object")
      feeds = {}
      for n, v in values.items():
        if n not in sig.inputs:
          raise invalid(f"input '{n}' is not an input of signature '{sig.name}'; it takes "
                        f"{names}")
        feeds[n] = json_to_ndarray(n, v, sig.inputs[n])
      if examples_lib.is_context_signature(sig):     # one context + N candidates: not merged
        rows = examples_lib.check_context_feeds(servable, sig.name, feeds, core.max_request_rows)
        out = servable.run(sig, feeds)
      else:
        rows = check_feeds(sig.name, sig.inputs, feeds, core.max_request_rows)
        out = core.infer(servable, sig, feeds, rows, deadline)
    finally:
      core.manager.release(servable)
    outs = sorted(out)
    if row_format:
      if len(outs) == 1:
        return {"predictions": ndarray_to_json(out[outs[0]])}
      cols = {k: ndarray_to_json(out[k]) for k in outs}
      return {"predictions": [{k: cols[k][i] for k in outs} for i in range(rows)]}
    if len(outs) == 1:
      return {"outputs": ndarray_to_json(out[outs[0]])}
    return {"outputs": {k: ndarray_to_json(out[k]) for k in outs}}

  def _examples_verb(self, verb: str, spec: model_pb2.ModelSpec, body: dict,
                     deadline: float) -> Any:
    core = self.core
    exs = body.get("examples")
    if not isinstance(exs, list):
      raise invalid("'examples' must be a list of {feature: value} objects")
    servable = core.acquire(spec)
    try:
      raw = raw_signature(servable)
      types = examples_lib.feature_types(raw.inputs) if raw is not None else None
      try:
        req_cls = (classification_pb2.ClassificationRequest if verb == "classify"
                   else regression_pb2.RegressionRequest)
        req = req_cls(model_spec=spec)
        if isinstance(body.get("context"), dict):
          wc = req.input.example_list_with_context
          wc.context.CopyFrom(examples_lib.make_example(body["context"], types, "context"))
          target = wc.examples
        else:
          target = req.input.example_list.examples
        for i, row in enumerate(exs):
          if not isinstance(row, dict):
            raise invalid(f"examples[{i}] must be an object")
          target.add().CopyFrom(examples_lib.make_example(row, types, f"examples[{i}]"))
      except DataError as e:     # a value that does not fit the feature's dtype
        raise invalid(str(e)) from None
      if verb == "classify":
        resp = core.classify_on(servable, req, deadline)
        return {"results": [[[c.label, c.score] for c in cl.classes]
                            for cl in resp.result.classifications]}
      resp = core.regress_on(servable, req, deadline)
      return {"results": [r.value for r in resp.result.regressions]}
    finally:
      core.manager.release(servable)


def make_http_server(front: RestFrontEnd, host: str, port: int) -> http.server.ThreadingHTTPServer:
  """A threaded HTTP/1.1 server for `front` bound to (host, port) (not yet serving)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ssr_tf-serving"

    def log_message(self, fmt: str, *args) -> None:   # route access logs to debug
      log.debug("rest %s " + fmt, self.client_address[0], *args)

    def _reply(self, code: int, payload: Any) -> None:
      data = json.dumps(payload).encode("utf-8")
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
      with front._lock:
        front.in_flight += 1
      try:
        if front.draining:
          self.close_connection = True
          self._reply(503, {"error": "server is draining (shutting down); retry on another "
                                     "replica"})
          return
        m = _PATH.match(self.path.split("?")[0])
        if m is None:
          self._discard_body()
          self._reply(404, {"error": f"malformed URL {self.path!r}; expected "
                                     "/v1/models/NAME[/versions/N][/metadata|:predict]"})
          return
        if method == "GET":
          self._reply(200, front.get(m))
          return
        raw = self._read_body()
        if raw is None:
          return
        try:
          body = json.loads(raw or b"{}")
        except ValueError as e:
          raise invalid(f"request body is not valid JSON: {e}") from None
        self._reply(200, front.post(m, body))
      except ServingError as e:
        self._reply(_HTTP.get(e.code, 500), {"error": e.message})
      except RecursionError:   # JSON nested deeper than Python's parser recurses
        self._reply(400, {"error": "request body nests JSON too deeply"})
      except Exception as e:   # never let a bad request kill the handler
        log.exception("REST request failed")
        self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}"})
      finally:
        with front._lock:
          front.in_flight -= 1

    def _too_large(self, length: int) -> None:
      self.close_connection = True
      self._reply(429, {"error": f"request body of {length} bytes exceeds the limit of "
                                 f"{front.max_body_bytes} (--max_message_bytes)"})

    def _read_body(self) -> bytes | None:
      """The request body (Content-Length or chunked); None when an error was sent."""
      if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
        return self._read_chunked()
      text = self.headers.get("Content-Length") or "0"
      if not text.strip().isdigit():
        self.close_connection = True   # the body's end is unknown
        raise invalid(f"Content-Length {text!r} is not a byte count")
      length = int(text)
      if length > front.max_body_bytes:
        self._too_large(length)
        return None
      return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
      parts, total = [], 0
      while True:
        line = self.rfile.readline(1026)
        try:
          size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
          self.close_connection = True
          raise invalid(f"malformed chunk size line {line[:40]!r} in a chunked request "
                        "body") from None
        if size == 0:
          while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass                        # trailer fields
          return b"".join(parts)
        total += size
        if total > front.max_body_bytes:
          self._too_large(total)
          return None
        data = self.rfile.read(size)
        if len(data) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
          self.close_connection = True
          raise invalid("truncated or malformed chunk in a chunked request body")
        parts.append(data)

    def _discard_body(self) -> None:
      if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
        self.close_connection = True
        return
      text = self.headers.get("Content-Length") or "0"
      length = int(text) if text.strip().isdigit() else -1
      if length < 0 or length > front.max_body_bytes:
        self.close_connection = True
      elif length:
        self.rfile.read(length)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
      self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
      self._dispatch("POST")

  server = http.server.ThreadingHTTPServer((host, port), Handler)
  server.daemon_threads = True
  return server


def drain(front: RestFrontEnd, timeout_s: float) -> int:
  """Waits until no REST request is in flight (or `timeout_s`); returns how many remain."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    with front._lock:
      if front.in_flight == 0:
        return 0
    time.sleep(0.01)
  return front.in_flight

