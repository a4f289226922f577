"""Nightly LibriSpeech evaluation job (thin entry point; logic in sew_pipeline/evaluation.py).

    python jobs/evaluate_librispeech.py --config configs/nightly_librispeech.yaml \
        --set librispeech_root=s3://corpora/LibriSpeech --set model=s3://models/sew-tiny
    ray job submit --working-dir . -- python jobs/evaluate_librispeech.py --set splits=[dev-clean]

Exit status: 0 = gate passed, 1 = WER regression (split and numbers on stderr), 2 = config error.
"""
import sys
from pathlib import Path

from sew_pipeline.evaluation import main

if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "configs" / "nightly_librispeech.yaml"
    sys.exit(main(sys.argv[1:], default_config=str(default)))
