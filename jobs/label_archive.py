"""Label an audio archive (e.g. call-center calls) with a SEW classifier on Ray: per-window rows plus
per-channel and per-call aggregate rows (see README).

  python jobs/label_archive.py --config configs/label_archive.yaml --set manifest=calls.jsonl --set output=/tmp/l
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main  # noqa: E402

if __name__ == "__main__":
    from sew_pipeline.config import LabelConfig
    sys.exit(main(LabelConfig, "label",
                  "label_archive: windowed SEW classification of an audio archive\n"
                  "(rerunning with the same output resumes: ids already written are skipped)",
                  "configs/label_archive.yaml"))
