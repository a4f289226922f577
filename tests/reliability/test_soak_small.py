"""The soak benchmark, small: 1,000 and 3,000 rows through jobs/transcribe_corpus.py with memory sampled.
(The 10,000-row version is `benchmarks/soak.py`; figures in README.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# decode and finalize side by side beside the one model actor (on 2 CPUs), so rows flow steadily through
# every stage instead of finalize waiting for decoding to pause
SIDE_BY_SIDE = ("decode.num_cpus=0.5", "finalize.num_cpus=0.5")


def test_soak_small_every_row_once_and_memory_does_not_grow_with_rows(tmp_path, tiny_ctc_dir):
    spec = importlib.util.spec_from_file_location("sew_soak", REPO / "benchmarks/soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    peaks = {}
    for rows in (1000, 3000):
        result = soak.soak(rows=rows, distinct=20, model=str(tiny_ctc_dir), every_s=0.5,
                           workdir=tmp_path / str(rows), sets=SIDE_BY_SIDE)
        assert result["exit_status"] == 0, result["log_tail"]
        # exactly the manifest's ids, each once
        assert result["ids_missing"] == 0 and result["ids_unexpected"] == 0 and result["duplicate_rows"] == 0
        assert result["ids_written"] == rows and result["rows_ok"] == rows
        assert result["samples"] >= 20
        peaks[rows] = result["peak_pss_mb"]
    # The whole job's footprint (driver + local Ray + actors, PSS summed) does not grow with the number of rows:
    # 2,000 more rows may add at most 350 MB to the peak (seen without a leak: +25 to +117 MB). A leak of
    # 0.3 MB per row in the model actor (which lives for the whole job) failed this: peaks 2392 / 3021 MB.
    assert 0 < peaks[1000] < 8000 and peaks[3000] - peaks[1000] < 350, peaks
