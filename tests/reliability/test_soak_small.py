"""The soak benchmark, small: a few hundred rows through jobs/transcribe_corpus.py with memory sampled.
(The 10,000-row version is `benchmarks/soak.py`; figures in README.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_small_every_row_once_and_memory_sampled(tmp_path, tiny_ctc_dir):
    spec = importlib.util.spec_from_file_location("sew_soak", REPO / "benchmarks/soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    result = soak.soak(rows=400, distinct=20, model=str(tiny_ctc_dir), every_s=0.5, workdir=tmp_path)
    assert result["exit_status"] == 0, result["log_tail"]
    assert result["ids_written"] == 400 and result["duplicate_rows"] == 0 and result["rows_ok"] == 400
    assert result["samples"] >= 4
    # the whole job (driver + local Ray + actors) stays within a bounded footprint on a small run
    assert 0 < result["peak_pss_mb"] < 8000
