"""`ssr_tf bench serving` end to end on the toy model (tiny counts)."""
import json

import pytest

from ssr_tf.serving import bench
from ssr_tf.serving.toy_model import build_toy_model

pytestmark = pytest.mark.slow


def test_bench_serving_json(tmp_path, capsys):
  base = str(tmp_path / "models")
  build_toy_model(base, 1, seed=0)
  out = tmp_path / "bench.json"
  assert bench.main(["--model_base_path", base, "--candidates", "1,16", "--concurrency", "1,2",
                     "--requests", "30", "--target", "16x2", "--target_requests", "200",
                     "--inprocess_requests", "10", "--hot_reload",
                     "--server_args=--max_batch_size=64", "--output", str(out)]) == 0
  printed = json.loads(capsys.readouterr().out)
  result = json.loads(out.read_text())
  assert printed == result
  cells = {(c["candidates"], c["concurrency"]): c for c in result["cells"]}
  assert set(cells) == {(1, 1), (1, 2), (16, 1), (16, 2)}
  assert cells[(16, 2)]["requests"] == 200 and cells[(1, 1)]["requests"] == 30
  for c in cells.values():
    assert c["errors"] == 0 and c["p50_ms"] <= c["p99_ms"] and c["qps"] > 0
  assert {r["engine"] for r in result["inprocess"]} == {"session", "eager"}
  assert [o["candidates"] for o in result["overhead"]] == [1, 16]
  assert result["target"]["cell"] == "16x2" and result["target"]["errors"] == 0
  assert result["hot_reload"]["published_version"] == 2 and result["hot_reload"]["errors"] == 0
  assert result["server"]["exit_code"] == 0
  assert result["server"]["flags"] == ["--max_batch_size=64"]
