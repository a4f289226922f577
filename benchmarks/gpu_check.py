"""The GPU path, checked on a CUDA machine in one run: parity, bf16, demo transcripts, a GPU job, a throughput table.

    python benchmarks/gpu_check.py [--out DIR] [--quick] [--skip-job]

Needs a CUDA build of torch and this repository's runtime dependencies (no network, no transformers). Steps, each
reported as it runs and written to DIR/gpu_check.json and DIR/gpu_check.md (the table for the README):
1. environment: torch, CUDA, device name, compute capability, native bf16, memory; `nvidia-smi` if present;
2. parity: the fp32 fast path on the GPU (TF32 off, as inference.tf32=false sets it) against the CPU reference
   model, demo-ctc and random sew-tiny / sew-mid-like shapes: max |logit difference| (budget 2e-3: cuDNN and
   cuBLAS sum in other orders than CPU kernels; with TF32 on it would be ~1e-2); bf16 logits' cosine (>= 0.999)
   where the GPU has native bf16;
3. demo transcripts: the 40 demo-corpus utterances through the CTC model stage on the GPU (fp32, and the run-time
   default precision) against the same stage on the CPU: identical transcripts expected for fp32;
4. `transcribe_corpus` jobs with GPU actors (use_gpu yes) over the demo corpus (x copies), with one and with two
   actors per GPU (inference.actors_per_gpu), their summaries, and GPU utilisation sampled with nvidia-smi;
5. throughput, model only: audio-s/s on the GPU for sew-tiny and sew-mid-like shapes, fp32 and bf16, 10 s clips,
   batch 1 / 8 / 32 / 128 (wall time incl. host->device copy and the one device->host copy per batch).
Exit status 1 if a parity or transcript check fails.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = REPO / "sew_pipeline/assets/demo_corpus"
PARITY_BUDGET, COSINE_MIN = 2e-3, 0.999


def environment() -> dict:
    import torch
    from sew_pipeline import device
    env = device.cuda_report()
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["nvidia_smi"] = None
    env["cpu_threads"] = torch.get_num_threads()
    return env


def shapes() -> dict:
    from sew_pipeline.models import SEWConfig
    return {"sew-tiny shape": SEWConfig(vocab_size=32, layerdrop=0.0, apply_spec_augment=False),
            "sew-mid-like (24 layers)": SEWConfig(vocab_size=32, num_hidden_layers=24, layerdrop=0.0,
                                                  apply_spec_augment=False)}


def models() -> dict:
    import torch
    from sew_pipeline.models import SEWForCTC
    from sew_pipeline.models.registry import resolve_model
    out = {"demo-ctc": SEWForCTC.from_pretrained(resolve_model("demo-ctc")).eval()}
    for name, cfg in shapes().items():
        torch.manual_seed(0)
        out[name] = SEWForCTC(cfg).eval()
    return out


def batch(n: int, seconds: float, seed: int = 0):
    """Equal-length clips: the fast path computes a padded item as if alone, the reference does not (its max-pool
    rule), so parity compares unpadded batches; padding is covered by the transcript check."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, int(seconds * 16000), generator=g)


def parity(models_: dict) -> dict:
    import torch
    from sew_pipeline import device
    from sew_pipeline.models.fast import prepare_for_inference
    device.set_tf32(False)
    bf16_ok = torch.cuda.is_bf16_supported()
    x = batch(4, 6.0)
    out = {}
    for name, model in models_.items():
        with torch.inference_mode():
            ref = model(x).logits
            fast = prepare_for_inference(model, "fp32", device="cuda")
            got = fast(x.cuda()).logits.float().cpu()
            row = {"fp32_max_abs_diff": float((got - ref).abs().max()), "fp32_ok": None, "bf16_cosine": None}
            row["fp32_ok"] = row["fp32_max_abs_diff"] <= PARITY_BUDGET
            if bf16_ok:
                b = prepare_for_inference(model, "bf16", device="cuda")
                got16 = b(x.cuda()).logits.float().cpu()
                row["bf16_cosine"] = float(torch.nn.functional.cosine_similarity(got16.flatten(), ref.flatten(), 0))
        out[name] = row
        print(f"parity {name}: {row}", flush=True)
    return out


def transcripts() -> dict:
    import pyarrow as pa
    from sew_pipeline.config import TranscribeConfig, load_config
    from sew_pipeline.postprocess import Finalizer
    from sew_pipeline.predictors import CTCPredictor, DecodeStage
    from sew_pipeline.spec import resolve
    manifest = [json.loads(x) for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()]
    table = pa.Table.from_pylist([{"id": r["id"], "audio_uri": str(CORPUS / r["audio_filepath"]), "offset_s": None,
                                   "duration_s": None, "text": r["text"], "split": None, "speaker": None}
                                  for r in manifest])
    texts = {}
    for label, sets in (("cpu fp32", ["inference.use_gpu=no"]), ("gpu fp32", ["inference.use_gpu=yes",
                        "inference.gpu_precision=fp32"]), ("gpu default", ["inference.use_gpu=yes"])):
        cfg = load_config(TranscribeConfig, None, ["manifest=m", "output=o", "model=demo-ctc", *sets])
        chunks = DecodeStage(cfg)(table)
        preds = CTCPredictor(cfg)(chunks)
        rows = Finalizer(resolve("demo-ctc"), "ctc", "gpu-check")(preds)
        texts[label] = dict(zip(rows.column("id").to_pylist(), rows.column("text").to_pylist()))
    cpu = texts["cpu fp32"]
    out = {k: sum(v[i] == cpu[i] for i in cpu) for k, v in texts.items() if k != "cpu fp32"}
    out["utterances"] = len(cpu)
    print(f"transcripts equal to the CPU's: {out}", flush=True)
    return out


def job(copies: int, actors_per_gpu: int) -> dict:
    rows = [json.loads(x) for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()]
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=10).stdout.split()
                samples.append(float(q[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
    with tempfile.TemporaryDirectory(prefix="sew_gpu_") as tmp:
        path = Path(tmp) / "manifest.jsonl"
        path.write_text("".join(json.dumps({"id": f"{r['id']}-{k}", "audio_filepath": str(CORPUS / r["audio_filepath"]),
                                            "text": r["text"]}) + "\n" for k in range(copies) for r in rows))
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        proc = subprocess.run([sys.executable, str(REPO / "jobs/transcribe_corpus.py"), "--set", f"manifest={path}",
                               "--set", f"output={Path(tmp) / 'out'}", "--set", "model=demo-ctc",
                               "--set", "inference.use_gpu=yes", "--set", f"inference.actors_per_gpu={actors_per_gpu}"],
                              capture_output=True, text=True, timeout=540)
        stop.set()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SUMMARY_JSON ")), None)
    out = {"actors_per_gpu": actors_per_gpu, "returncode": proc.returncode, "summary": json.loads(line.split(" ", 1)[1]) if line else None,
           "gpu_util_mean_pct": round(float(np.mean(samples)), 1) if samples else None,
           "gpu_util_max_pct": max(samples) if samples else None}
    if proc.returncode:
        out["stderr_tail"] = proc.stderr[-3000:]
    print(f"job: {out}", flush=True)
    return out


def throughput(quick: bool) -> list[dict]:
    import torch
    from sew_pipeline.models import SEWForCTC
    from sew_pipeline.models.fast import prepare_for_inference
    rows = []
    for name, cfg in shapes().items():
        torch.manual_seed(0)
        model = SEWForCTC(cfg).eval()
        for precision in ("fp32", "bf16") if torch.cuda.is_bf16_supported() else ("fp32",):
            fast = prepare_for_inference(model, precision, device="cuda")
            for n in (1, 8, 32) if quick else (1, 8, 32, 128):
                x = torch.randn(n, 160000).pin_memory()
                with torch.inference_mode():
                    fast(x.cuda(non_blocking=True)).logits.argmax(-1).cpu()  # warm-up (cuDNN autotune, allocator)
                    torch.cuda.synchronize()
                    t0, reps = time.perf_counter(), 0
                    while time.perf_counter() - t0 < (1.0 if quick else 3.0):
                        fast(x.cuda(non_blocking=True)).logits.argmax(-1).cpu()
                        reps += 1
                    seconds = time.perf_counter() - t0
                row = {"model": name, "precision": precision, "batch": n,
                       "audio_s_per_s": round(reps * n * 10.0 / seconds), "peak_gib": round(
                           torch.cuda.max_memory_allocated() / 2**30, 2)}
                torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                print(f"throughput {row}", flush=True)
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU: {env.get('name')} (compute capability {env.get('capability')}, {env.get('memory_gib')} GiB, "
             f"bf16 {env.get('bf16')}), torch {env.get('torch')}, CUDA {env.get('cuda')}", "",
             "| model | precision | batch (10 s clips) | audio-s/s | peak GiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['batch']} | {r['audio_s_per_s']:,} | {r['peak_gib']} |"
              for r in report.get("throughput", [])]
    lines += ["", "| parity (vs CPU reference) | fp32 max abs diff | bf16 cosine |", "|---|---|---|"]
    lines += [f"| {k} | {v['fp32_max_abs_diff']:.2e} | {v['bf16_cosine']} |" for k, v in report["parity"].items()]
    for run in report.get("jobs") or []:
        s = run.get("summary") or {}
        lines += ["", f"transcribe_corpus, {run['actors_per_gpu']} actor(s) per GPU: exit {run['returncode']}, "
                      f"{s.get('audio_s_per_s')} audio-s/s end to end, GPU utilisation mean "
                      f"{run.get('gpu_util_mean_pct')} % (max {run.get('gpu_util_max_pct')} %)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/gpu_check")
    ap.add_argument("--quick", action="store_true", help="shorter throughput sweep")
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--copies", type=int, default=20, help="demo corpus copies for the job")
    args = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch %s); nothing to check" % torch.__version__, file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": environment()}
    print(f"environment: {report['environment']}", flush=True)
    report["parity"] = parity(models())
    report["transcripts"] = transcripts()
    report["throughput"] = throughput(args.quick)
    # one actor per GPU, or two (one's host work overlapping the other's forward passes): which keeps it busier
    report["jobs"] = [] if args.skip_job else [job(args.copies, n) for n in (1, 2)]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    t = report["transcripts"]
    ok = all(v["fp32_ok"] and (v["bf16_cosine"] is None or v["bf16_cosine"] >= COSINE_MIN)
             for v in report["parity"].values()) and t["gpu fp32"] == t["utterances"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
