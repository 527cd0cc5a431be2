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


def test_profile_tangents_small_runs(tmp_path, capsys, one_thread):
    """The explicit-vs-torch.func profile (benchmarks/profile_tangents.py) times every W+ row of the engine's own
    groups, both ways, on the same columns: the two Jacobian blocks it compares agree to float32 rounding."""
    import profile_tangents

    path = str(tmp_path / "tangents.json")
    profile_tangents.main(["--small", "--device", "cpu", "--precision", "float32", "--chunk", "8", "--repeats", "1",
                           "--json", path])
    report = json.load(open(path))
    assert [r["row"] for r in report["rows"]] == list(range(len(report["rows"]))) and len(report["rows"]) > 2
    assert all(r["explicit_ms"] > 0 and r["func_ms"] > 0 for r in report["rows"])
    assert max(r["rel_difference"] for r in report["rows"]) <= 1e-5
    assert "| all |" in capsys.readouterr().out

