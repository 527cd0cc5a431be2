"""benchmarks/bench_models.py runs on the CPU (--small) and checks itself against the fused reference first."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))


def test_bench_models_small(tmp_path):
    import bench_models
    out = tmp_path / "models.json"
    report = bench_models.main(["--small", "--no-toy", "--device", "cpu", "--batches", "1", "--chunks", "4",
                                "--precisions", "float32", "--json", str(out)])
    assert report["correctness"]["vs_fused_reference"] <= bench_models.IMAGE_RTOL
    saved = json.loads(out.read_text())
    assert {r["method"] for r in saved["rows"]} == {"ours forward", "ours vmap(jvp)"}
    assert all(r["items_per_s"] > 0 for r in saved["rows"])
