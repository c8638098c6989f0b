"""Every fault a hostile user tried, as one table: each gets a named error, never a traceback.

One row per case: ``(case, request, expected, names)``.

* ``request``: an argv list for ``ssr_tf`` (run in-process through ``ssr_tf.cli.main``;
  ``{name}`` fields are inputs that :class:`Inputs` builds on first use), ``rest(...)``
  (an HTTP request to ``ssr_tf serve --rest_port``, serving the toy model) or
  ``drain(...)`` (what a client saw around a SIGTERM to a server under load).
* ``expected``: the exit code, the HTTP status, or the gRPC status code.
* ``names``: a regular expression the error must contain (one line on stderr for exit 2:
  ``ssr_tf: error: ...``; the JSON ``error`` of a REST reply; the gRPC details); for
  exit code 0 / HTTP 200, something the output must contain.

A failed ``data convert`` also must leave nothing behind: no ``{out}`` folder (nor the
parents it created), an earlier conversion in ``{prior}`` untouched (``--overwrite`` only
replaces it once a conversion succeeded), a folder that existed before (``{existing}``)
kept as it was.

Adding a case is adding a row; ``slow_case`` rows train a few steps first. Related unit-level checks with exact messages stay next to their
code: tests/test_pipelines.py (test_bad_rows_budget_and_errors, test_cli_one_line_error),
tests/test_config.py, tests/test_serving.py (gRPC bad requests, REST errors).
"""
import base64
import collections
import gzip
import json
import pathlib
import re
import shutil
import socket
import threading
import time

import pytest

from conftest import experiment_yaml

import grpc  # noqa: E402  (after conftest: TF_USE_LEGACY_KERAS)


def rest(method_path: str, body: str = "good", framing: str = "length") -> tuple:
  """An HTTP request: `method_path` ("POST /v1/..."), a body of BODIES, and how it is
  framed: length (Content-Length), chunked, badchunk (a malformed chunk size line),
  badlength (a Content-Length that is not a number)."""
  return ("REST", method_path, body, framing)


def drain(what: str) -> tuple:
  """What clients saw around a SIGTERM to a loaded server (see `drained`): grpc_new /
  rest_new / status_new (a call sent after the signal), in_flight (calls queued before
  it), load (every call of 4 threads calling without pause throughout)."""
  return ("DRAIN", what)


def slow_case(*row):
  """A row that trains a few steps first (~20-40 s)."""
  return pytest.param(*row, id=row[0], marks=[pytest.mark.slow])


CONVERT = ["data", "convert", "--quiet"]
CSV = CONVERT + ["--format", "csv", "--mapping", "{mapping}"]
TRAIN = ["train", "--config", "{cfg}"]
PREDICT = "POST /v1/models/ssr:predict"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

TABLE = [
    # -- data convert: input files ----------------------------------------------------
    ("truncated gz input", CONVERT + ["--format", "criteo", "--input", "{trunc_gz}", "--output", "{out}"], 2, r"trunc\.txt\.gz: truncated or corrupt gzip data after line \d+ \([\d,]+ rows read"),
    ("not gzip data in a .gz", CONVERT + ["--format", "criteo", "--input", "{not_gz}", "--output", "{out}"], 2, r"notgz\.txt\.gz: truncated or corrupt gzip data"),
    ("UTF-8 BOM in a criteo TSV", CONVERT + ["--format", "criteo", "--input", "{bom_tsv}", "--output", "{out}"], 0, r'"rows": \{"train"'),
    ("UTF-8 BOM before a CSV header", CSV + ["--input", "{bom_csv}", "--ratios", "1,0,0", "--output", "{out}"], 0, r'"rows": \{"train": 3'),
    ("input file missing", CONVERT + ["--format", "avazu", "--input", "{tmp}/missing.csv", "--output", "{out}"], 2, r"missing\.csv: input file not found"),
    ("empty input file", CSV + ["--input", "{empty_csv}", "--output", "{out}"], 2, r"empty\.csv: empty file"),
    ("label column missing", CSV + ["--input", "{nolabel_csv}", "--output", "{out}"], 2, r"nolabel\.csv: no column 'y' \(labels\.click\)"),
    ("bad row", CSV + ["--input", "{bad_csv}", "--ratios", "1,0,0", "--output", "{out}"], 2, r"bad\.csv:3: column 'price': 'x' is not a number"),
    ("bad rows beyond --skip_bad_rows", CSV + ["--input", "{bad_csv}", "--ratios", "1,0,0", "--skip_bad_rows", "1", "--output", "{out}"], 2, r"bad\.csv:4: expected 3 fields, found 2 \(more than --skip_bad_rows 1"),
    ("bad row, nested new --output", CSV + ["--input", "{bad_csv}", "--ratios", "1,0,0", "--output", "{out}/a/b"], 2, r"bad\.csv:3"),
    ("bad row into an existing folder", CSV + ["--input", "{bad_csv}", "--ratios", "1,0,0", "--output", "{existing}"], 2, r"bad\.csv:3"),
    ("bad row with --overwrite", CSV + ["--input", "{bad_csv}", "--ratios", "1,0,0", "--output", "{prior}", "--overwrite"], 2, r"bad\.csv:3"),
    ("empty training split", CSV + ["--input", "{good_csv}", "--ratios", "0,1,1", "--output", "{out}"], 2, r"the training split is empty"),
    # -- data convert: flags and output folder ----------------------------------------
    ("unknown format", CONVERT + ["--format", "parquet", "--input", "{bad_csv}", "--output", "{out}"], 2, r"unknown format 'parquet'"),
    ("bad flag value", CSV + ["--input", "{good_csv}", "--gzip_level", "0", "--output", "{out}"], 2, r"--gzip_level"),
    ("bad --ratios", CSV + ["--input", "{good_csv}", "--ratios", "8,x,1", "--output", "{out}"], 2, r"--ratios"),
    ("unknown flag", CSV + ["--input", "{good_csv}", "--output", "{out}", "--shards", "3"], 2, r"unknown arguments \['--shards'"),
    ("output already converted", CSV + ["--input", "{good_csv}", "--output", "{prior}"], 2, r"already holds .*--overwrite"),
    ("output is a file", CSV + ["--input", "{good_csv}", "--ratios", "1,0,0", "--output", "{blocker}"], 2, r"--output .*blocker: cannot create the output folder"),
    # -- config and overrides ---------------------------------------------------------
    ("--set value not YAML", TRAIN + ["--set", "data.batch_size=[1"], 2, r"override data\.batch_size: value '\[1' is not valid YAML"),
    ("--set without =", TRAIN + ["--set", "train.epochs"], 2, r"key\.path=value"),
    ("unknown key", TRAIN + ["--set", "train.epoch=1"], 2, r"train\.epoch.*did you mean 'train\.epochs'"),
    ("wrong type", TRAIN + ["--set", "data.batch_size=x"], 2, r"'data\.batch_size': expected an integer"),
    ("unknown model", TRAIN + ["--set", "model.name=ssrr"], 2, r"unknown model 'ssrr'"),
    ("config file missing", ["train", "--config", "{tmp}/none.yaml"], 2, r"config file not found"),
    ("config file not YAML", ["train", "--config", "{bad_yaml}"], 2, r"bad\.yaml: not valid YAML .*line 2"),
    ("unknown command", ["trian"], 2, r"unknown command 'trian'"),
    # -- training data ----------------------------------------------------------------
    ("spec file missing", TRAIN + ["--set", "data.spec={tmp}/nospec.yaml"], 2, r"feature spec not found.*nospec\.yaml"),
    ("no shards match", TRAIN + ["--set", "data.train={tmp}/x/*.tfrecord"], 2, r"'data\.train': no files match"),
    ("shards hold no records", TRAIN + ["--set", "data.train={empty_shards}/*.tfrecord"], 2, r"'data\.train'.*hold no records"),
    ("feature absent from records", ["train", "--config", "{cfg_brand}"], 2, r"part-0000\d\.tfrecord.*no column 'brand'"),
    ("corrupt shard", ["train", "--config", "{cfg_corrupt}"], 2, r"part-00001\.tfrecord.*corrupt"),
    slow_case("resume with a changed config", ["train", "--config", "{crashed_cfg}", "--set", "data.batch_size=64"], 2, r"data\.batch_size: 128 -> 64"),
    slow_case("dtype mismatch in the records", ["train", "--config", "{cfg_dtype}"], 2, r"'item_id' as int64.*dtype string"),
    # -- other commands ---------------------------------------------------------------
    ("compare: unwritable --output", ["compare", "--config", "{cfg}", "--against", "{cfg}", "--output", "{blocker}/c.json"], 2, r"--output .*blocker/c\.json: cannot create its folder"),
    ("score: unwritable --output", ["score", "--saved_model", "{tmp}", "--input", "{cfg}", "--output", "{blocker}/s.tsv"], 2, r"--output .*blocker/s\.tsv: cannot create its folder"),
    ("bench serving: unwritable --output", ["bench", "serving", "--server", "127.0.0.1:1", "--output", "{blocker}/b.json"], 2, r"--output .*blocker/b\.json: cannot create its folder"),
    ("export: --warmup_batches 0", ["export", "--config", "{cfg}", "--output", "{tmp}/x", "--warmup_batches", "0"], 2, r"--warmup_batches '0'"),
    ("export: --warmup_batches 1,x", ["export", "--config", "{cfg}", "--output", "{tmp}/x", "--warmup_batches", "1,x"], 2, r"--warmup_batches '1,x'"),
    ("export: --warmup_batches -4", ["export", "--config", "{cfg}", "--output", "{tmp}/x", "--warmup_batches", "-4"], 2, r"--warmup_batches '-4'"),
    # -- REST -------------------------------------------------------------------------
    ("REST: JSON nested 100k deep", rest(PREDICT, "deep"), 400, r"nests JSON too deeply"),
    ("REST: chunked body", rest(PREDICT, "good", "chunked"), 200, r'"predictions": \[\{"click_prob"'),
    ("REST: malformed chunk", rest(PREDICT, "good", "badchunk"), 400, r"malformed chunk size line"),
    ("REST: chunked body over the limit", rest(PREDICT, "huge", "chunked"), 429, r"exceeds the limit"),
    ("REST: Content-Length not a number", rest(PREDICT, "good", "badlength"), 400, r"Content-Length 'x12' is not a byte count"),
    ("REST: body not JSON", rest(PREDICT, "notjson"), 400, r"not valid JSON"),
    # -- SIGTERM under load -----------------------------------------------------------
    ("SIGTERM: gRPC call after it", drain("grpc_new"), UNAVAILABLE, r"server is draining"),
    ("SIGTERM: status call after it", drain("status_new"), UNAVAILABLE, r"server is draining"),
    ("SIGTERM: REST call after it", drain("rest_new"), 503, r"server is draining"),
    ("SIGTERM: calls in flight finish", drain("in_flight"), grpc.StatusCode.OK, r""),
    ("SIGTERM: calls under load", drain("load"), UNAVAILABLE, r""),
]


def _params():
  return [r if isinstance(r, type(pytest.param())) else pytest.param(*r, id=r[0])
          for r in TABLE]


# ---------------------------------------------------------------------------------------
# Inputs of the CLI rows, built on first use.


def _lines(path: pathlib.Path, lines, prefix: bytes = b"") -> str:
  path.write_bytes(prefix + "".join(l + "\n" for l in lines).encode())
  return str(path)


def _criteo_rows(n: int) -> list[str]:
  rows = []
  for i in range(n):
    ints = [str((i * 7 + k) % 50) for k in range(13)]
    cats = [f"{(i * 31 + k) % 11:08x}" for k in range(26)]
    rows.append("\t".join([str(i % 2)] + ints + cats))
  return rows


class Inputs(dict):
  """`{name}` fields of the argv rows: each built by method `_name` when first used."""

  def __init__(self, tmp: pathlib.Path, synth_dir: pathlib.Path):
    super().__init__()
    self.tmp, self.synth_dir = tmp, synth_dir

  def __missing__(self, key: str) -> str:
    value = str(getattr(self, "_" + key)())
    self[key] = value
    return value

  def _data_copy(self, name: str) -> pathlib.Path:
    data = self.tmp / name
    shutil.copytree(self.synth_dir, data)
    return data

  def _config(self, name: str, data_dir: pathlib.Path, **sections) -> pathlib.Path:
    folder = self.tmp / f"cfg_{name}"
    folder.mkdir()
    return experiment_yaml(folder, data_dir, **sections)

  def _tmp(self):
    return self.tmp

  def _out(self):
    return self.tmp / "out" / "conversion"     # neither exists before the run

  def _existing(self):
    (self.tmp / "existing").mkdir()
    return self.tmp / "existing"

  def _blocker(self):
    return _lines(self.tmp / "blocker", ["a file where a folder should be"])

  def _mapping(self):
    return _lines(self.tmp / "map.yaml", [
        "features:", "  - {column: city, type: categorical, dtype: string}",
        "  - {column: price, type: numeric}", "labels: {click: y}"])

  def _good_csv(self):
    return _lines(self.tmp / "good.csv", ["y,city,price", "1,a,1", "0,b,2", "1,c,3"])

  def _bad_csv(self):
    return _lines(self.tmp / "bad.csv", ["y,city,price", "1,a,1", "0,b,x", "1,c", "0,d,4"])

  def _bom_csv(self):
    return _lines(self.tmp / "bom.csv", ["y,city,price", "1,a,1", "0,b,2", "1,c,3"],
                  prefix=b"\xef\xbb\xbf")

  def _empty_csv(self):
    return _lines(self.tmp / "empty.csv", [])

  def _nolabel_csv(self):
    return _lines(self.tmp / "nolabel.csv", ["city,price", "a,1"])

  def _bom_tsv(self):
    return _lines(self.tmp / "bom.txt", _criteo_rows(40), prefix=b"\xef\xbb\xbf")

  def _trunc_gz(self):
    data = gzip.compress("".join(r + "\n" for r in _criteo_rows(3000)).encode())
    path = self.tmp / "trunc.txt.gz"
    path.write_bytes(data[:len(data) * 2 // 3])
    return path

  def _not_gz(self):
    return _lines(self.tmp / "notgz.txt.gz", _criteo_rows(3))

  def _prior(self):
    """A folder holding an earlier, successful conversion (checked after the row)."""
    from ssr_tf.pipelines import convert
    out = self.tmp / "prior"
    convert.convert(["--quiet", "--format", "csv", "--mapping", self["mapping"], "--input",
                     self["good_csv"], "--ratios", "1,0,0", "--output", str(out)])
    return out

  def _bad_yaml(self):
    return _lines(self.tmp / "bad.yaml", ["train: ["])

  def _cfg(self):
    return self._config("base", self.synth_dir)

  def _empty_shards(self):
    import tensorflow as tf
    (self.tmp / "empty_shards").mkdir()
    tf.io.TFRecordWriter(str(self.tmp / "empty_shards" / "part-0.tfrecord")).close()
    return self.tmp / "empty_shards"

  def _cfg_brand(self):
    data = self._data_copy("brand")
    spec = (data / "spec.yaml").read_text()
    (data / "spec.yaml").write_text(
        spec.replace("features:\n", "features:\n- {name: brand, num_buckets: 9}\n", 1))
    return self._config("brand", data)

  def _cfg_corrupt(self):
    data = self._data_copy("corrupt")
    shard = data / "train" / "part-00001.tfrecord"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:len(raw) // 2] + b"\xff" * 64 + raw[len(raw) // 2 + 64:])
    return self._config("corrupt", data)

  def _cfg_dtype(self):
    """The spec says item_id is a string; the records hold int64."""
    data = self._data_copy("dtype")
    spec = (data / "spec.yaml").read_text()
    old = "- name: item_id\n  num_buckets: 400\n"
    assert old in spec
    (data / "spec.yaml").write_text(
        spec.replace(old, "- name: item_id\n  dtype: string\n  hash_buckets: 400\n"))
    return self._config("dtype", data, model=_TINY_MODEL,
                        train={"steps_per_epoch": 3})

  def _crashed_cfg(self):
    """A run that crashed after a backup (batch 128), to be resumed."""
    import tensorflow as tf
    from ssr_tf.config import load_config
    from ssr_tf.training import train
    cfg = self._config("crashed", self.synth_dir, model=_TINY_MODEL, data={"batch_size": 128},
                       train={"steps_per_epoch": 4, "checkpoint_every_steps": 2})

    class Crash(tf.keras.callbacks.Callback):
      def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= 3:
          raise RuntimeError("crash after the backup at step 2")

    with pytest.raises(RuntimeError, match="crash after the backup"):
      train(load_config(str(cfg)), callbacks=[Crash()])
    assert (pathlib.Path(load_config(str(cfg)).train.model_dir) / "backup").is_dir()
    return cfg


_TINY_MODEL = {"name": "dnn", "embedding_dim": 4, "backbone": {"hidden_units": [8]}}


def _snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


@pytest.fixture
def cli_case(request, tmp_path, synth_dir):
  """(argv, inputs, snapshots of {prior} / {existing}) of a CLI row, built in the setup
  phase: a failure to build the inputs is an error, never an expected failure."""
  template = request.node.callspec.params["request_"]
  if not isinstance(template, list):
    return None
  inputs = Inputs(tmp_path, synth_dir)
  argv = [a.format_map(inputs) for a in template]
  before = {k: _snapshot(pathlib.Path(inputs[k])) for k in ("prior", "existing")
            if any("{" + k + "}" in a for a in template)}
  return argv, inputs, before


def _run_cli(cli_case, expected, names, tmp_path, capsys):
  from ssr_tf import cli
  argv, inputs, before = cli_case
  capsys.readouterr()
  code = cli.main(argv)
  out, err = capsys.readouterr()
  assert code == expected, (code, err[-3000:])
  assert "Traceback" not in err
  if expected == 2:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssr_tf: error: "), err
    assert re.search(names, lines[0]), lines[0]
  else:
    assert re.search(names, out), out
  if expected != 0 and "out" in inputs:
    assert not (tmp_path / "out").exists(), "a failed convert left its output folder"
  for key, snap in before.items():
    folder = pathlib.Path(inputs[key])
    assert folder.is_dir() and _snapshot(folder) == snap, f"{key} folder changed"
    assert not (folder / ".convert-tmp").exists()


# ---------------------------------------------------------------------------------------
# REST: the toy model behind `ssr_tf serve --rest_port`, raw HTTP/1.1 over a socket.

MAX_BYTES = 400_000


def _bodies() -> dict:
  from ssr_tf.serving.toy_model import toy_examples
  good = json.dumps({"instances": [{"b64": base64.b64encode(e).decode()}
                                   for e in toy_examples(3)]}).encode()
  return {"good": good, "notjson": b"{not json",
          "deep": b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
          "huge": b'{"instances": ["' + b"x" * (MAX_BYTES + 1) + b'"]}'}


def _frame(body: bytes, framing: str) -> tuple[str, bytes]:
  """(headers, body bytes) of a request body framed as `framing`."""
  if framing == "length":
    return f"Content-Length: {len(body)}\r\n", body
  if framing == "badlength":
    return "Content-Length: x12\r\n", body
  if framing == "badchunk":
    return "Transfer-Encoding: chunked\r\n", b"zz\r\n" + body[:10] + b"\r\n0\r\n\r\n"
  chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                    for i in range(0, len(body), 4096))
  return "Transfer-Encoding: chunked\r\n", chunks + b"0\r\n\r\n"


def http_call(port: int, method_path: str, body: bytes = b"",
              framing: str = "length") -> tuple[int, str]:
  """(status, body text) of one request on a fresh connection (Connection: close)."""
  method, path = method_path.split(" ", 1)
  headers, data = _frame(body, framing) if method == "POST" else ("", b"")
  head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
          f"Content-Type: application/json\r\n{headers}\r\n").encode()
  with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    try:
      s.sendall(head + data)
    except (BrokenPipeError, ConnectionResetError):
      pass                     # the server answered (e.g. 429) and closed before the end
    reply = b""
    while True:
      try:
        chunk = s.recv(65536)
      except ConnectionResetError:
        break
      if not chunk:
        break
      reply += chunk
  status_line, _, rest_ = reply.partition(b"\r\n")
  return int(status_line.split()[1]), rest_.partition(b"\r\n\r\n")[2].decode(errors="replace")


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory):
  from ssr_tf.serving.process import ServerProcess
  from ssr_tf.serving.toy_model import build_toy_model
  base = str(tmp_path_factory.mktemp("toy"))
  build_toy_model(base, version=1, seed=0)
  srv = ServerProcess(base, ["--file_system_poll_wait_seconds=0",
                             f"--max_message_bytes={MAX_BYTES}"], rest=True)
  with srv:
    yield srv
  assert srv.returncode == 0, srv.log()[-2000:]
  assert "Traceback" not in srv.log() and "RecursionError" not in srv.log()


# ---------------------------------------------------------------------------------------
# SIGTERM: one server under load, drained once; the rows read what the clients saw.


@pytest.fixture(scope="module")
def drained(tmp_path_factory) -> dict:
  """{what: [(code, details)]}: calls queued before SIGTERM (in_flight), calls sent after
  it while the server drains them (grpc_new, status_new, rest_new), and every call of 4
  threads calling throughout, until after the process exited (load)."""
  import tensorflow as tf
  from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc,
                                       predict_pb2, prediction_service_pb2_grpc)
  from ssr_tf.serving.process import ServerProcess
  from ssr_tf.serving.toy_model import build_toy_model, toy_examples
  base = str(tmp_path_factory.mktemp("toy_drain"))
  build_toy_model(base, version=1, seed=0)

  def request(n, seed):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "ssr"
    req.inputs["examples"].CopyFrom(tf.make_tensor_proto(toy_examples(n, seed=seed),
                                                         dtype=tf.string))
    return req

  def code_of(fn):
    try:
      fn()
      return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
      return e.code(), e.details() or ""

  # A long batch timeout holds the queued calls in the server while it drains.
  srv = ServerProcess(base, ["--batch_timeout_micros=2000000", "--max_batch_size=100000",
                             "--file_system_poll_wait_seconds=0"], rest=True)
  srv.start()
  srv.wait_available()
  seen: dict = collections.defaultdict(list)
  channel = grpc.insecure_channel(srv.target)
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  stop = threading.Event()

  def load(i):
    own = grpc.insecure_channel(srv.target)
    s = prediction_service_pb2_grpc.PredictionServiceStub(own)
    req = request(4, 100 + i)
    while not stop.is_set():
      seen["load"].append(code_of(lambda: s.Predict(req, timeout=30)))
    own.close()

  threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  futures = [stub.Predict.future(request(8, i), timeout=30) for i in range(4)]
  time.sleep(0.6)
  srv.terminate()
  time.sleep(0.4)
  assert not any(f.done() for f in futures), "calls finished before SIGTERM: test too slow"
  seen["grpc_new"].append(code_of(lambda: stub.Predict(request(2, 9), timeout=10)))
  status = get_model_status_pb2.GetModelStatusRequest()
  status.model_spec.name = "ssr"
  seen["status_new"].append(code_of(lambda: model_service_pb2_grpc.ModelServiceStub(
      channel).GetModelStatus(status, timeout=10)))
  code, text = http_call(srv.rest_port, "GET /v1/models/ssr")
  seen["rest_new"].append((code, text))
  seen["in_flight"] = [code_of(f.result) for f in futures]
  assert srv.proc.wait(timeout=60) == 0
  time.sleep(0.5)                      # calls of the load threads after the exit
  stop.set()
  for t in threads:
    t.join(timeout=60)
  channel.close()
  srv.stop()
  log = srv.log()
  assert "Received SIGTERM" in log and "Server stopped" in log and "Traceback" not in log
  return seen


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,request_,expected,names", _params())
def test_fault(case, request_, expected, names, tmp_path, cli_case, capsys, request):
  if cli_case is not None:
    _run_cli(cli_case, expected, names, tmp_path, capsys)
  elif request_[0] == "REST":
    srv = request.getfixturevalue("rest_server")
    _, method_path, body, framing = request_
    status, text = http_call(srv.rest_port, method_path, _bodies()[body], framing)
    assert status == expected, text[:500]
    assert re.search(names, text), text[:500]
    assert srv.proc.poll() is None
  else:
    seen = request.getfixturevalue("drained")[request_[1]]
    assert seen, f"no call recorded for {request_[1]}"
    codes = collections.Counter(c for c, _ in seen)
    if request_[1] == "load":      # every call that failed failed with `expected`
      assert set(codes) <= {grpc.StatusCode.OK, expected}, codes
      assert codes[grpc.StatusCode.OK] and codes[expected], codes
    else:
      assert set(codes) == {expected}, seen
      assert all(re.search(names, text) for _, text in seen), seen


def test_table_rows_are_unique():
  names = [r.id if hasattr(r, "id") else r[0] for r in _params()]
  assert len(names) == len(set(names)) and len(names) >= 40
