"""The pixel-sharded benchmark runs CPU-sized (gloo, 1 and 2 processes) and its checks against one process pass."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_distributed  # noqa: E402


def test_bench_distributed_small_runs(tmp_path, capsys):
    path = str(tmp_path / "bench.json")
    bench_distributed.main(["--small", "--worlds", "1", "2", "--regions", "24", "--gram-rows", "1024",
                            "--latents-per-rank", "2", "--repeats", "1", "--threads", "1", "--json", path])
    report = json.load(open(path))
    rows = report["rows"]
    assert {(r["what"], r["world"]) for r in rows} == {(what, world) for what in ("gram", "latent mining", "mining")
                                                       for world in (1, 2)}
    latent = [r for r in rows if r["what"] == "latent mining"]
    assert [r["latents"] for r in latent] == [2, 4] and latent[1]["efficiency"] > 0
    weak = [r for r in rows if r["what"] == "gram" and r["scaling"] == "weak"]
    assert [r["rows_total"] for r in weak] == [1024, 2048] and weak[0]["efficiency"] == 1.0
    sharded = [r for r in rows if r.get("step") == "sharded regions"]
    assert all(r["check"] == "ok" for r in sharded) and sharded[1]["efficiency_vs_one_process"] > 0
    assert report["meta"]["nccl_nvls_enable"] == "0"
    assert "| 2 | sharded regions |" in capsys.readouterr().out
