"""The Jacobian benchmark runs (CPU-sized) and its correctness check passes."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_jacobian  # noqa: E402


def test_bench_jacobian_small_runs(tmp_path, capsys, one_thread):
    path = str(tmp_path / "bench.json")
    bench_jacobian.main(["--small", "--device", "cpu", "--repeats", "1", "--columns", "64", "--rows", "32",
                         "--precision-study", "--json", path])
    report = json.load(open(path))
    methods = {(r["space"], r["method"]) for r in report["rows"]}
    assert ("wplus", "ours + layer skip") in methods and ("w", "ours") in methods
    assert all(v <= 1e-4 for errors in report["correctness"].values() for v in errors.values())
    skip = next(r for r in report["rows"] if r["method"] == "ours + layer skip")
    assert skip["stage_runs"] < skip["stage_runs_without_skip"]
    assert "| wplus | ours + layer skip |" in capsys.readouterr().out


def test_bench_row_survives_out_of_memory():
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    row = bench_jacobian.measure(bench_jacobian.Timer("cpu"), oom, 4, 16, space="w", method="x", unit="tangents")
    assert row["error"] == "out of memory" and row["seconds"] is None
    bench_jacobian.print_table([row])
