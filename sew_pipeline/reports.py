"""Evaluation outputs: Markdown report with PNG plots, run history (JSON lines), nightly gate.

All IO goes through fsspec, so every location may be local or ``s3://`` (with storage options).

History: one JSON object per line, one line per run, oldest first. A record is
``{"run_id", "timestamp", "model", "checkpoint_sha256", "splits": {split: {"wer", "cer",
"wer_whisper", "cer_whisper", "n_utts", "n_words"}}}``. Appending is read-modify-write
(object stores cannot append); one nightly job per history file is assumed.

Gate: for each split of this run, its WER (minimal normalisation, a fraction: 0.05 = 5 %)
is compared with the most recent history run that has the split and with the baseline
(if any). It fails when ``wer - reference_wer > max_wer_increase``, where
``max_wer_increase`` is an absolute fraction too (0.005 = half a WER point).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import fsspec
import jiwer
import pandas as pd

import matplotlib

matplotlib.use("Agg")  # headless: no display on workers or CI
import matplotlib.pyplot as plt  # noqa: E402


# ---------------------------------------------------------------- IO (local or s3://)
def read_text(uri: str, storage_options: Mapping | None = None) -> str | None:
    """Whole text file, or None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8")


def write_bytes(uri: str, data: bytes, storage_options: Mapping | None = None) -> str:
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
    return uri


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


# ---------------------------------------------------------------- history
def history_record(summary: Mapping[str, Any]) -> dict:
    """The compact per-run line kept in the history (derived from summary.json)."""
    keep = ("wer", "cer", "wer_whisper", "cer_whisper", "wer_greedy", "n_utts", "n_words")
    return {
        "run_id": summary["run_id"],
        "timestamp": summary["timestamp"],
        "model": summary.get("model"),
        "checkpoint_sha256": summary.get("checkpoint_sha256"),
        "splits": {s: {k: v[k] for k in keep if k in v} for s, v in summary["splits"].items()},
    }


def read_history(uri: str, storage_options: Mapping | None = None) -> list[dict]:
    text = read_text(uri, storage_options)
    if not text:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_history(uri: str, record: Mapping, storage_options: Mapping | None = None) -> list[dict]:
    """Append one run and return the full history including it."""
    runs = read_history(uri, storage_options) + [dict(record)]
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in runs)
    write_bytes(uri, body.encode("utf-8"), storage_options)
    return runs


# ---------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateFailure:
    split: str
    wer: float
    reference_wer: float
    reference: str  # "previous run <id>" or "baseline"
    max_increase: float

    @property
    def message(self) -> str:
        return (
            f"{self.split}: WER {self.wer:.4f} ({100 * self.wer:.2f}%) is worse than {self.reference} "
            f"WER {self.reference_wer:.4f} ({100 * self.reference_wer:.2f}%) by "
            f"{100 * (self.wer - self.reference_wer):.2f} points (allowed: {100 * self.max_increase:.2f})"
        )


def split_wers(source: Mapping) -> dict[str, float]:
    """{split: wer} from a plain {split: wer} mapping, a summary.json or a history record."""
    splits = source.get("splits", source)
    out = {}
    for split, value in splits.items():
        out[split] = float(value["wer"] if isinstance(value, Mapping) else value)
    return out


def previous_wers(history: Sequence[Mapping]) -> dict[str, tuple[str, float]]:
    """Per split, (run_id, wer) of the latest history run that has that split."""
    out: dict[str, tuple[str, float]] = {}
    for run in history:  # oldest first, so later runs overwrite
        for split, wer in split_wers(run).items():
            out[split] = (str(run.get("run_id")), wer)
    return out


def check_gate(
    current: Mapping[str, float],
    history: Sequence[Mapping],
    baseline: Mapping[str, float] | None,
    max_wer_increase: float,
) -> list[GateFailure]:
    """Failures for every split whose WER regressed by more than the allowed margin."""
    prev = previous_wers(history)
    failures = []
    for split, wer in sorted(current.items()):
        refs = []
        if split in prev:
            refs.append((f"previous run {prev[split][0]}", prev[split][1]))
        if baseline and split in baseline:
            refs.append(("baseline", float(baseline[split])))
        for name, ref_wer in refs:
            if wer - ref_wer > max_wer_increase:
                failures.append(GateFailure(split, wer, ref_wer, name, max_wer_increase))
    return failures


# ---------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_wer_per_split(splits: Mapping[str, Mapping]) -> bytes:
    """Bar chart of WER (%) per split: minimal and whisper-normalised side by side."""
    names = sorted(splits)
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(names) + 2), 3.5))
    xs = range(len(names))
    has_whisper = all("wer_whisper" in splits[n] for n in names)
    width = 0.4 if has_whisper else 0.6
    minimal = [100 * splits[n]["wer"] for n in names]
    bars = ax.bar([x - (width / 2 if has_whisper else 0) for x in xs], minimal, width, label="WER (minimal)")
    ax.bar_label(bars, fmt="%.1f")
    if has_whisper:
        whisper = [100 * splits[n]["wer_whisper"] for n in names]
        ax.bar_label(ax.bar([x + width / 2 for x in xs], whisper, width, label="WER (whisper norm)"), fmt="%.1f")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("WER (%)")
    ax.set_title("WER per split")
    ax.legend(fontsize="small")
    return _png(fig)


def plot_trend(history: Sequence[Mapping]) -> bytes:
    """WER (%) per split across history runs, one line per split."""
    labels = [f"{str(r.get('timestamp') or '')[:10]}\n{r.get('run_id')}" for r in history]
    splits = sorted({s for r in history for s in r.get("splits", {})})
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(history) + 3), 3.5))
    for split in splits:
        pts = [(i, 100 * r["splits"][split]["wer"]) for i, r in enumerate(history) if split in r.get("splits", {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=split)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("WER (%)")
    ax.set_title(f"WER trend ({len(history)} runs)")
    if splits:
        ax.legend(fontsize="small")
    return _png(fig)


# ---------------------------------------------------------------- worst utterances
def alignment_text(reference: str, hypothesis: str) -> str:
    """jiwer's REF/HYP/operation lines for one (normalised) pair."""
    if not reference and not hypothesis:
        return "REF: \nHYP: "
    text = jiwer.visualize_alignment(jiwer.process_words(reference, hypothesis), show_measures=False)
    return "\n".join(line for line in text.splitlines() if line and not line.startswith("=== SENTENCE"))


def worst_utterances(scored: pd.DataFrame, n: int) -> pd.DataFrame:
    """Top-n rows by WER, ties broken by the number of word errors."""
    df = scored.assign(_errors=scored["substitutions"] + scored["deletions"] + scored["insertions"])
    df = df[df["_errors"] > 0].sort_values(["wer", "_errors", "id"], ascending=[False, False, True])
    return df.head(n).drop(columns="_errors")


# ---------------------------------------------------------------- Markdown
def _pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def _num(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _split_table(splits: Mapping[str, Mapping]) -> list[str]:
    greedy = any("wer_greedy" in s for s in splits.values())  # a beam job: its greedy transcripts scored beside
    lines = [
        "| split | utts | words | WER %" + (" | WER % (greedy)" if greedy else "") +
        " | CER % | WER % (whisper) | CER % (whisper) | failed items | audio h | RTF | audio s/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if greedy else ""),
    ]
    for name in sorted(splits):
        s = splits[name]
        lines.append(
            f"| {name} | {s['n_utts']} | {s['n_words']} | {_pct(s['wer'])} | "
            + (f"{_pct(s.get('wer_greedy'))} | " if greedy else "") + f"{_pct(s['cer'])} | "
            f"{_pct(s.get('wer_whisper'))} | {_pct(s.get('cer_whisper'))} | {s.get('n_failed', 0)} | "
            f"{_num(s.get('audio_hours'), '{:.4f}')} | {_num(s.get('real_time_factor'), '{:.4f}')} | "
            f"{_num(s.get('audio_s_per_s'), '{:.1f}')} |"
        )
    return lines


def _worst_section(worst: pd.DataFrame) -> list[str]:
    lines = ["## Worst utterances", ""]
    if worst.empty:
        return lines + ["No utterance has errors.", ""]
    for row in worst.itertuples(index=False):
        errs = f"S={row.substitutions} D={row.deletions} I={row.insertions}"
        lines += [
            f"### {row.id} ({row.split}, speaker {row.speaker}): WER {_pct(row.wer)}% ({errs})",
            "",
            "```",
            alignment_text(row.reference_norm, row.hypothesis_norm),
            "```",
            "",
        ]
    return lines


def render_markdown(
    summary: Mapping, worst: pd.DataFrame, gate: Sequence[GateFailure], plots: Mapping[str, str]
) -> str:
    """The report body; ``plots`` maps a title to a path relative to the report."""
    overall = summary.get("overall", {})
    lines = [
        f"# LibriSpeech evaluation: {summary.get('model')}",
        "",
        f"- run: `{summary['run_id']}` at {summary['timestamp']}",
        f"- checkpoint sha256: `{summary.get('checkpoint_sha256')}`",
        f"- overall WER {_pct(overall.get('wer'))}% / CER {_pct(overall.get('cer'))}% "
        f"(pooled over {overall.get('n_words')} words, {overall.get('n_utts')} utterances)",
        "- normalisation: upper-case + whitespace collapse (apostrophes kept); second number: "
        "whisper-style English normalisation on both sides",
        f"- gate: {'PASSED' if not gate else 'FAILED'} (max WER increase "
        f"{_pct(summary.get('gate', {}).get('max_wer_increase'))} points)",
        *[f"  - {f.message}" for f in gate],
        "",
        "## Per split",
        "",
        *_split_table(summary["splits"]),
        "",
    ]
    for title, rel in plots.items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    return "\n".join(lines + _worst_section(worst))


def write_report(
    out_dir: str,
    summary: Mapping,
    scored: pd.DataFrame,
    history: Sequence[Mapping],
    gate: Sequence[GateFailure],
    *,
    worst_n: int = 10,
    storage_options: Mapping | None = None,
) -> dict[str, str]:
    """Write report.md and its PNGs under out_dir; returns {name: uri}."""
    pngs = {
        "WER per split": ("plots/wer_per_split.png", plot_wer_per_split(summary["splits"])),
        "WER trend": ("plots/wer_trend.png", plot_trend(history)),
    }
    uris = {}
    for title, (rel, data) in pngs.items():
        uris[rel] = write_bytes(join_uri(out_dir, rel), data, storage_options)
    body = render_markdown(summary, worst_utterances(scored, worst_n), gate, {t: rel for t, (rel, _) in pngs.items()})
    uris["report.md"] = write_bytes(join_uri(out_dir, "report.md"), body.encode("utf-8"), storage_options)
    return uris
