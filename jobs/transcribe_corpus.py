"""Transcribe a corpus with a SEW CTC model on Ray; one Parquet row per item (see README).

  python jobs/transcribe_corpus.py --config configs/transcribe_corpus.yaml --set output=/tmp/out
  ray job submit --working-dir . -- python jobs/transcribe_corpus.py --set manifest=s3://bucket/corpus/
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main  # noqa: E402

if __name__ == "__main__":
    from sew_pipeline.config import TranscribeConfig
    sys.exit(main(TranscribeConfig, "transcribe",
                  "transcribe_corpus: SEW CTC transcription with word timings over a manifest\n"
                  "(rerunning with the same output resumes: ids already written are skipped)",
                  "configs/transcribe_corpus.yaml"))
