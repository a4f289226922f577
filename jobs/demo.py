"""`make demo`: transcribe the shipped demo corpus with the shipped demo-ctc model on Ray, then score WER.

Runs the same code as jobs/transcribe_corpus.py and jobs/evaluate_librispeech.py (a local Ray is started when
none is running) and prints the WER table and where the Parquet files and the report are.

    python jobs/demo.py [--set model=/path/to/sew-checkpoint] [--set output=/tmp/demo/{run_id}]
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sew_pipeline.config import parse_args  # noqa: E402
from sew_pipeline.evaluation import EvalConfig, evaluate  # noqa: E402


def main(argv: list[str]) -> int:
    cfg = parse_args(EvalConfig, argv, __doc__.splitlines()[0], default_config=str(REPO / "configs/demo.yaml"))
    cfg.manifests = {name: str(REPO / uri) if "://" not in uri else uri for name, uri in cfg.manifests.items()}
    result = evaluate(cfg)
    print(f"\nmodel {cfg.model} (sha256 {str(result.summary.get('checkpoint_sha256'))[:12]}…)")
    beam = result.summary.get("decoder") == "beam"  # then both decoders were scored, on the same frames
    print(f"{'set':<26}{'utts':>6}" + (f"{'greedy WER %':>14}{'beam+LM WER %':>15}" if beam else f"{'WER %':>8}")
          + f"{'CER %':>8}{'RTF':>8}")
    for name, s in result.summary["splits"].items():
        wers = f"{100 * s.get('wer_greedy', float('nan')):>14.2f}{100 * s['wer']:>15.2f}" if beam \
            else f"{100 * s['wer']:>8.2f}"
        print(f"{name:<26}{s['n_utts']:>6}{wers}{100 * s['cer']:>8.2f}{s.get('real_time_factor') or 0:>8.3f}")
    outputs = result.summary["outputs"]
    print(f"\nper-utterance Parquet: {outputs['utterances']}\npipeline Parquet:      "
          f"{outputs['utterances'].rsplit('/', 1)[0]}/predictions/<set>/\nsummary:               "
          f"{outputs['summary']}\nreport:                {outputs['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
