"""Nightly LibriSpeech evaluation: transcribe each split through the pipeline, score, report, gate.

Per split, the split folder is the manifest of one ``ray_pipeline.transcribe`` run (so real-time
factor and throughput are per split); predictions are joined to the manifest's references by
``id``. Outputs under ``output`` (``{run_id}`` in it is replaced by the run id):
``predictions/<split>/`` (pipeline Parquet), ``utterances.parquet`` (per-utterance scores),
``summary.json``, ``report.md`` and ``plots/*.png``. The run is then appended to ``history``.
The job fails (non-zero exit) when the gate finds a regression; see ``reports`` for the rule.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sew_pipeline import metrics, reports, storage
from sew_pipeline.config import ConfigError, PipelineConfig, TranscribeConfig, opt, parse_args
from sew_pipeline.errors import redact
from sew_pipeline.manifests import read_manifest
from sew_pipeline.results import read_results

log = logging.getLogger(__name__)
KNOWN_SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other")


@dataclasses.dataclass
class EvalConfig(TranscribeConfig):
    """jobs/evaluate_librispeech.py: WER of a model on LibriSpeech splits, with history and gate."""
    manifest: str = opt("", "not used here: each split folder of librispeech_root is the manifest")
    output: str = opt("", "this run's folder (local or s3://); '{run_id}' in it is replaced by the run id")
    librispeech_root: str = opt("", "folder (local or s3://) with LibriSpeech split folders (or its parent)")
    manifests: dict[str, str] = opt({}, "instead of librispeech_root: {set name: manifest URI or LibriSpeech "
                                        "split folder}, each scored as one split (e.g. the demo corpus)")
    splits: list[str] = opt([], "splits to evaluate; empty = those of " + ", ".join(KNOWN_SPLITS) + " present")
    history: str = opt("", "JSON-lines run history to read (trend, gate) and append to; empty = none")
    baseline: Optional[Union[str, dict[str, float]]] = opt(
        None, "reference WERs for the gate: {split: wer} or a JSON file/URI ({split: wer} or a summary.json)")
    max_wer_increase: float = opt(0.005, "gate margin, absolute WER fraction (0.005 = 0.5 WER points)")
    whisper_normalization: bool = opt(True, "also report WER/CER after whisper-style English normalisation")
    worst_n: int = opt(10, "worst utterances shown with their alignment in the report")
    run_id: Optional[str] = opt(None, "run id; null = UTC time (YYYYmmddTHHMMSSZ)")

    def validate(self) -> None:
        if self.manifest:
            raise ConfigError("manifest: not used by the evaluation job; set librispeech_root")
        if bool(self.librispeech_root) == bool(self.manifests):
            raise ConfigError("set exactly one of librispeech_root (a folder with dev-clean/, test-clean/, ...) "
                              "and manifests")
        first = self.librispeech_root or next(iter(self.manifests.values()))
        PipelineConfig.validate(dataclasses.replace(self, manifest=first))
        if self.segmentation.method != "windows":  # scores one transcript per utterance id
            raise ConfigError("segmentation.method: the evaluation job scores whole utterances (windows)")
        if self.max_wer_increase < 0:
            raise ConfigError("max_wer_increase must be >= 0")
        if self.worst_n < 0:
            raise ConfigError("worst_n must be >= 0")


@dataclasses.dataclass
class EvalResult:
    summary: dict
    failures: list[reports.GateFailure]
    uris: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.failures


# ---------------------------------------------------------------- inputs
def discover_splits(root: str, requested: Sequence[str], storage_options: Mapping | None) -> tuple[str, list[str]]:
    """(root actually holding the splits, splits to run). Requested splits must all exist."""
    fs, path = storage.filesystem(root, storage_options)
    present = _split_dirs(fs, path)
    wanted = set(requested or KNOWN_SPLITS)
    if not wanted & present and fs.isdir(f"{path.rstrip('/')}/LibriSpeech"):  # given the corpus' parent
        root, path = storage.join(root, "LibriSpeech"), f"{path.rstrip('/')}/LibriSpeech"
        present = _split_dirs(fs, path)
    if requested:
        missing = [s for s in requested if s not in present]
        if missing:
            raise FileNotFoundError(f"split(s) {', '.join(missing)} not found under {root} (found: {sorted(present)})")
        return root, list(requested)
    found = [s for s in KNOWN_SPLITS if s in present]
    if not found:
        raise FileNotFoundError(f"no LibriSpeech split ({', '.join(KNOWN_SPLITS)}) under {root}")
    return root, found


def _split_dirs(fs, path: str) -> set[str]:
    if not fs.isdir(path):
        return set()
    return {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True) if e["type"] == "directory"}


def load_baseline(baseline: Union[str, Mapping, None], storage_options: Mapping | None) -> dict[str, float] | None:
    if baseline is None or baseline == "":
        return None
    if isinstance(baseline, str):
        text = reports.read_text(baseline, storage_options)
        if text is None:
            raise FileNotFoundError(f"baseline not found: {baseline}")
        baseline = json.loads(text)
    return reports.split_wers(baseline)


def read_predictions(uri: str, storage_options: Mapping | None) -> pd.DataFrame:
    """The pipeline's complete Parquet files, one row per id (a successful row wins over an error)."""
    cols = ["id", "text", "text_greedy", "decoder", "error_type", "error", "duration_s", "processing_s", "model",
            "checkpoint_sha256"]
    table = read_results(uri, dict(storage_options or {}), columns=cols)
    df = table.to_pandas() if table is not None else pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df = df.sort_values("error_type", na_position="first", kind="stable")
    return df.drop_duplicates("id", keep="first")


def join_references(refs: pa.Table, preds: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows (references) left-joined with predictions by id; missing output = error."""
    left = refs.select(["id", "split", "speaker", "chapter", "audio_uri", "text"]).to_pandas()
    left = left.rename(columns={"text": "reference"})
    joined = left.merge(preds.rename(columns={"text": "hypothesis"}), on="id", how="left", validate="one_to_one")
    missing = ~joined["id"].isin(preds["id"])
    joined.loc[missing, "error_type"] = "no_output"
    joined.loc[missing, "error"] = "no row for this id in the pipeline output"
    return joined


# ---------------------------------------------------------------- one split
TranscribeFn = Callable[[TranscribeConfig], Any]


def _transcribe_cfg(cfg: EvalConfig, manifest: str, output: str) -> TranscribeConfig:
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TranscribeConfig) if f.init}
    return TranscribeConfig(**{**base, "manifest": manifest, "output": output})


def split_sources(cfg: EvalConfig, opts: Mapping) -> dict[str, str]:
    """{split name: manifest URI}: the configured manifests, or the LibriSpeech split folders found."""
    if cfg.manifests:
        return dict(cfg.manifests)
    root, splits = discover_splits(cfg.librispeech_root, cfg.splits, opts)
    return {split: storage.join(root, split) for split in splits}


def run_split(cfg: EvalConfig, manifest: str, split: str, out_dir: str, opts: Mapping, transcribe: TranscribeFn):
    """Transcribe one split; returns (joined per-utterance frame, pipeline summary dict)."""
    refs = read_manifest(manifest, opts)
    refs = refs.filter(pc.is_valid(refs["text"]))  # audio without a transcript cannot be scored
    started = time.monotonic()
    tcfg = _transcribe_cfg(cfg, manifest, reports.join_uri(out_dir, "predictions", split))
    result = transcribe(tcfg)
    pipe = dict(getattr(result, "summary", None) or {})
    pipe.setdefault("wall_s", time.monotonic() - started)
    # tcfg.output, not result.output: the latter is redacted for display
    joined = join_references(refs, read_predictions(tcfg.output, opts))
    joined["split"] = split
    return joined, pipe


def split_perf(joined: pd.DataFrame, pipe: Mapping) -> dict:
    """Audio hours of the split; real-time factor (wall / audio) and throughput (audio s per wall s)
    as the pipeline measured them for the work this run did (resumed rows are not re-timed)."""
    audio_s = float(joined["duration_s"].fillna(0).sum())
    wall_s = float(pipe.get("wall_s") or 0.0)
    model_s = float(joined["processing_s"].fillna(0).sum())
    return {
        "audio_hours": audio_s / 3600,
        "wall_s": wall_s,
        "real_time_factor": pipe.get("real_time_factor", wall_s / audio_s if audio_s else None),
        "audio_s_per_s": pipe.get("audio_s_per_s", audio_s / wall_s if wall_s else None),
        "model_real_time_factor": model_s / audio_s if audio_s else None,
        "n_failed": int(joined["error_type"].notna().sum()),
        "resumed_rows": int(pipe.get("skipped_already_done") or 0),
    }


# ---------------------------------------------------------------- whole run
def _run_id(cfg: EvalConfig) -> str:
    return cfg.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def greedy_wers(scored: pd.DataFrame) -> dict[str, float]:
    """{split: WER of the greedy transcripts} where the job beam-decoded (its rows carry text_greedy too): both
    decoders scored from one job, on the same frames."""
    out = {}
    if "text_greedy" not in scored:
        return out
    for split, g in scored[scored["text_greedy"].notna()].groupby("split"):
        counts = metrics.word_counts([metrics.normalize_minimal(r) for r in g["reference"]],
                                     [metrics.normalize_minimal(h) for h in g["text_greedy"]])
        errors = sum(c.substitutions + c.deletions + c.insertions for c in counts)
        out[str(split)] = errors / max(1, sum(c.ref_len for c in counts))
    return out


def build_summary(cfg: EvalConfig, run_id: str, scored: pd.DataFrame, perf: Mapping[str, dict]) -> dict:
    by_split = metrics.aggregate(scored, "split").set_index("split").to_dict("index")
    for split, wer in greedy_wers(scored).items():
        by_split[split]["wer_greedy"] = wer
    speakers: dict[str, dict] = {}
    for row in metrics.aggregate(scored, ["split", "speaker"]).to_dict("records"):
        speakers.setdefault(row.pop("split"), {})[str(row.pop("speaker"))] = row
    sha = scored["checkpoint_sha256"].dropna()
    return {
        "run_id": run_id,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": redact(cfg.model),
        "checkpoint_sha256": str(sha.iloc[0]) if len(sha) else None,
        "normalization": {"wer": "minimal", "wer_whisper": "whisper" if cfg.whisper_normalization else None},
        "decoder": cfg.decoding.method,  # what "wer" scores; with beam, "wer_greedy" scores the greedy text
        "splits": {s: {**v, **perf.get(s, {})} for s, v in by_split.items()},
        "overall": metrics.corpus_scores(scored),
        "speakers": speakers,
    }


def evaluate(cfg: EvalConfig, transcribe: TranscribeFn | None = None) -> EvalResult:
    """Run the whole evaluation; never raises on a regression (see ``EvalResult.failures``)."""
    if transcribe is None:
        from sew_pipeline.ray_pipeline import transcribe  # the only Ray entry point
    opts = storage.storage_options(cfg.storage_options)
    run_id = _run_id(cfg)
    out_dir = cfg.output.replace("{run_id}", run_id)
    sources = split_sources(cfg, opts)
    history = reports.read_history(cfg.history, opts) if cfg.history else []
    baseline = load_baseline(cfg.baseline, opts)

    frames, perf = [], {}
    for split, manifest in sources.items():
        log.info("evaluating %s", split)
        joined, pipe = run_split(cfg, manifest, split, out_dir, opts, transcribe)
        frames.append(joined)
        perf[split] = split_perf(joined, pipe)
    scored = metrics.score_frame(pd.concat(frames, ignore_index=True), whisper=cfg.whisper_normalization)

    summary = build_summary(cfg, run_id, scored, perf)
    failures = reports.check_gate(reports.split_wers(summary), history, baseline, cfg.max_wer_increase)
    summary["gate"] = {"passed": not failures, "max_wer_increase": cfg.max_wer_increase, "baseline": baseline,
                       "failures": [f.message for f in failures]}
    uris = write_outputs(out_dir, summary, scored, history, failures, cfg, opts)
    if cfg.history:
        reports.append_history(cfg.history, reports.history_record(summary), opts)
        uris["history"] = cfg.history
    return EvalResult(summary, failures, uris)


def write_outputs(out_dir: str, summary: dict, scored: pd.DataFrame, history: list, failures: list,
                  cfg: EvalConfig, opts: Mapping) -> dict[str, str]:
    uris = {"utterances": reports.join_uri(out_dir, "utterances.parquet"),
            "summary": reports.join_uri(out_dir, "summary.json")}
    summary["outputs"] = {**uris, "report": reports.join_uri(out_dir, "report.md")}
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(scored, preserve_index=False), buf)
    reports.write_bytes(uris["utterances"], buf.getvalue().to_pybytes(), opts)
    trend = list(history) + [reports.history_record(summary)]
    uris.update(reports.write_report(out_dir, summary, scored, trend, failures, worst_n=cfg.worst_n,
                                     storage_options=opts))
    body = json.dumps(summary, indent=2, sort_keys=True, default=_json_default)
    reports.write_bytes(uris["summary"], body.encode("utf-8"), opts)
    return uris


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None, transcribe: TranscribeFn | None = None,
         default_config: str | None = "configs/nightly_librispeech.yaml") -> int:
    """CLI: 0 = gate passed, 1 = regression (messages on stderr), 2 = config error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(EvalConfig, argv, "Nightly LibriSpeech WER evaluation with history and regression gate.",
                     default_config=default_config)
    result = evaluate(cfg, transcribe)
    for split, s in sorted(result.summary["splits"].items()):
        print(f"{split}: WER {100 * s['wer']:.2f}% CER {100 * s['cer']:.2f}% ({s['n_utts']} utts, "
              f"RTF {s.get('real_time_factor') or 0:.3f})")
    print(f"report: {result.uris.get('report.md')}")
    if result.failures:
        for f in result.failures:
            print(f"GATE FAILED: {f.message}", file=sys.stderr)
        return 1
    print("gate passed")
    return 0
