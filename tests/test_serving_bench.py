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
                     "--inprocess_requests", "10", "--hot_reload", "--overhead_rounds", "2",
                     "--swap", "--swap_count", "1", "--swap_window_seconds", "3",
                     "--swap_cell", "16x2",
                     "--server_args=--max_batch_size=64 --file_system_poll_wait_seconds=0.2",
                     "--output", str(out)]) == 0
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
  for o in result["overhead_interleaved"]:
    assert o["rounds"] == 2 and o["ratio"] > 0 and len(o["ratio_per_round"]) == 2
  assert "overhead_target" not in result            # no 128-candidate size in this run
  b = result["breakdown"]
  assert b["candidates"] == 128 and b["session_call_us"] > 0 and b["grpc_status_roundtrip_us"] > 0
  qps = {(q["candidates"], q["concurrency"]): q for q in result["qps_vs_inprocess"]}
  assert set(qps) == set(cells) and all(q["inprocess_qps"] > 0 for q in qps.values())
  swap = result["swap"]
  assert swap["errors"] == 0 and swap["swaps"] == 1 and swap["ratio_p99"] > 0
  assert len(swap["served_versions"]) >= 2          # old and new (when v3 loads in time: 3)
  assert swap["per_swap"][0]["version"] == 3
  assert result["target"]["cell"] == "16x2" and result["target"]["errors"] == 0
  assert result["hot_reload"]["published_version"] == 2 and result["hot_reload"]["errors"] == 0
  assert result["server"]["exit_code"] == 0
  assert result["server"]["flags"] == ["--max_batch_size=64",
                                       "--file_system_poll_wait_seconds=0.2"]
