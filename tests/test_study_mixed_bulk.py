"""benchmarks/study_mixed_bulk.py: its claim holds and the script runs (CPU)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import study_mixed_bulk as study  # noqa: E402


def test_study_mixed_bulk_reaches_float64_in_three_exact_products():
    """benchmarks/study_mixed_bulk.py's claim (NOTES.md item 19): from W̃ formed with TF32 operands and float32
    accumulation, two Neumann terms of the correction reach float64 residuals within three exact products, and the
    uncorrected start is far from it (the study would show nothing if W̃ were exact)."""
    torch.manual_seed(0)
    K = study.region_rows(1024, (20, 20, 20, 24), 64)
    Kq = study.tf32(K)
    W_approx = (Kq @ Kq.T).double()
    mu = torch.linalg.eigvalsh(K @ K.T).flip(0)
    history = study.refine(K, W_approx, mu, 16, 32, steps=3, terms=2)
    assert history[0][0] > 1e-6 and history[0][1] > 1e-9
    assert history[2][0] < 1e-12 and history[2][1] < 1e-13


def test_study_mixed_bulk_prints_its_table(capsys):
    study.main(["--d", "128", "--grid", "24", "--box", "6", "6", "8", "10", "--k", "4", "--block", "8",
                "--steps", "2"])
    out = capsys.readouterr().out
    assert out.count("| TF32 |") == 3 and "| float16, column scales |" in out
