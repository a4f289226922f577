"""Where the model runs and what its failures mean: device choice, precision per device, failure kinds. No Ray.

* `pick_device(use_gpu)`: "yes" (asked for, or set by the pipeline because it reserved a GPU for the actor)
  without a CUDA device is a `DeviceError` naming the key, never a silent single CPU thread holding a GPU.
* `resolve_precision(precision, device)`: what runs. bf16 needs native support (CUDA: compute capability >= 8,
  `torch.cuda.is_bf16_supported()`; CPU: warned only, it still runs); int8 is dynamic quantisation, CPU only:
  on CUDA it runs bf16 where native, else fp32; "auto" = fp32 on CPU, bf16 on a CUDA device that has it.
* `failure_kind(exc)`: "oom" (retry the group in halves), "device" (the CUDA context is broken: every later call
  would fail, so the process must end and Ray restart the actor and redo its batch), or "item" (an error row).
* `set_tf32(allow)`: TF32 for CUDA matmuls and convolutions set explicitly (torch enables it for cuDNN
  convolutions by default, which would make "fp32" mean TF32 convs beside fp32 GEMMs).
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)
EXIT_DEVICE_FAILURE = 70  # a model actor that exits with this lost its device (Ray restarts it)
# What a broken CUDA context says (torch raises these as RuntimeError or torch.AcceleratorError).
_STICKY = ("illegal memory access", "device-side assert", "unspecified launch failure", "cuda error: misaligned",
           "an illegal instruction", "cudaerrorlaunchfailure", "cublas_status_execution_failed",
           "cudnn_status_execution_failed", "ecc error", "uncorrectable", "gpu has fallen off the bus")
_OOM = ("out of memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed")


class DeviceError(RuntimeError):
    """The configured device cannot be used here (a config/install problem: the job cannot run)."""


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def pick_device(use_gpu: str) -> str:
    if use_gpu == "no":
        return "cpu"
    if cuda_available():
        return "cuda"
    if use_gpu == "yes":
        raise DeviceError(no_cuda_message())
    return "cpu"


def no_cuda_message() -> str:
    import torch
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    return (f"inference.use_gpu=yes (or a GPU reserved for the model actor) but this process sees no CUDA device "
            f"(torch {torch.__version__}, {build} build; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): install a CUDA build of torch in the workers' "
            "environment, or set inference.use_gpu=no")


def cuda_report() -> dict[str, Any]:
    """What a GPU worker can use (run where the GPU is: the driver may have none)."""
    import torch
    report = {"available": torch.cuda.is_available(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if report["available"]:
        report.update(name=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                      bf16=bool(torch.cuda.is_bf16_supported()),
                      memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    else:
        report["message"] = no_cuda_message()
    return report


def native_bf16(device: str) -> bool:
    if device == "cuda":
        import torch
        return bool(torch.cuda.is_bf16_supported())
    from sew_pipeline.models.fast import cpu_has_native_bf16
    return cpu_has_native_bf16()


def resolve_precision(precision: str, device: str, bf16_ok: bool | None = None) -> tuple[str, str | None]:
    """(precision that runs on ``device``, why it differs from the one asked for, or None)."""
    bf16_ok = native_bf16(device) if bf16_ok is None and (precision in ("bf16", "int8", "auto")) else bf16_ok
    if precision == "auto":
        return ("bf16" if device == "cuda" and bf16_ok else "fp32"), None
    if device != "cuda":
        return precision, None
    if precision == "int8":
        to = "bf16" if bf16_ok else "fp32"
        return to, f"precision int8 (dynamic quantisation) runs on CPU only: {to} on this GPU"
    if precision == "bf16" and not bf16_ok:
        return "fp32", "this GPU has no native bf16 (compute capability < 8.0): fp32"
    return precision, None


def set_tf32(allow: bool) -> None:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def failure_kind(exc: BaseException) -> str:
    """"oom", "device" (sticky: the process must end) or "item"."""
    import torch
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return "oom"
    text = str(exc).lower()
    if any(s in text for s in _OOM):
        return "oom"
    accelerator = getattr(torch, "AcceleratorError", ())
    if (accelerator and isinstance(exc, accelerator)) or any(s in text for s in _STICKY):
        return "device"
    return "item"


def release_memory(device: str) -> None:
    """After an out-of-memory error: give cached blocks back before the retry."""
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()


def end_process(exc: BaseException) -> None:
    """The device is broken for this process: say why, then exit so that Ray restarts the actor and retries
    its batch (rows are keyed, so the redo replaces the lost result; nothing is written twice)."""
    log.critical("model device failed, ending this actor process so Ray replaces it: %s: %s",
                 type(exc).__name__, exc)
    logging.shutdown()
    os._exit(EXIT_DEVICE_FAILURE)
