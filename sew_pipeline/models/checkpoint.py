"""Checkpoint folders in the Hugging Face layout: config.json + model.safetensors (or legacy pytorch_model.bin).

Reads local folders and any fsspec URI (s3:// through s3fs). Safetensors is preferred; a .bin is opened only with
`torch.load(weights_only=True)`, which refuses arbitrary pickled objects. Two spellings of the positional conv's
weight norm exist in the wild: `weight_g`/`weight_v` (the 2021 asapp checkpoints, torch.nn.utils.weight_norm) and
`parametrizations.weight.original0/1` (what transformers 5.x writes); both load, and we write the latter.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from sew_pipeline.models.config import SEWConfig

log = logging.getLogger(__name__)
M = TypeVar("M", bound="PretrainedMixin")

SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
_OURS_G, _OURS_V = "pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.weight_v"
_PARAM_G = "pos_conv_embed.conv.parametrizations.weight.original0"
_PARAM_V = "pos_conv_embed.conv.parametrizations.weight.original1"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be loaded into the requested model."""


def _read(uri: str, name: str, storage_options: dict[str, Any] | None) -> bytes | None:
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    path = f"{root.rstrip('/')}/{name}"
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_checkpoint_files(uri: str, storage_options: dict[str, Any] | None = None
                          ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(config dict, state dict, sha256 of the weights file) from a checkpoint folder or URI."""
    raw_config = _read(uri, CONFIG_NAME, storage_options)
    if raw_config is None:
        raise CheckpointError(f"no {CONFIG_NAME} in checkpoint folder {uri}")
    blob = _read(uri, SAFETENSORS_NAME, storage_options)
    if blob is not None:
        state = load_safetensors_bytes(blob)
    else:
        blob = _read(uri, PICKLE_NAME, storage_options)
        if blob is None:
            raise CheckpointError(f"no {SAFETENSORS_NAME} or {PICKLE_NAME} in checkpoint folder {uri}")
        try:  # weights_only: tensors and plain containers only, never code
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a bad checkpoint
            raise CheckpointError(f"refusing {PICKLE_NAME} in {uri}: not a plain tensor state dict ({exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{PICKLE_NAME} in {uri} is not a tensor state dict")
    return json.loads(raw_config), state, hashlib.sha256(blob).hexdigest()


def to_our_keys(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Normalise checkpoint keys to our module names: weight-norm spellings, and the base-model prefix.

    `prefix` is "sew." for heads and "" for SEWModel: a base checkpoint loads into a head (the head stays freshly
    initialised) and a head checkpoint loads into SEWModel (its head weights are dropped).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.replace(_PARAM_G, _OURS_G).replace(_PARAM_V, _OURS_V)
        if prefix and not key.startswith(prefix) and _is_base_key(key):
            key = prefix + key
        elif not prefix and key.startswith("sew."):
            key = key[len("sew."):]
        out[key] = value
    return out


def to_saved_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(_OURS_G, _PARAM_G).replace(_OURS_V, _PARAM_V): v for k, v in state.items()}


def _is_base_key(key: str) -> bool:
    return key.split(".")[0] in {"feature_extractor", "layer_norm", "feature_projection", "encoder", "masked_spec_embed"}


class PretrainedMixin:
    """from_pretrained / save_pretrained for our nn.Modules; expects `self.config` and a `(config)` constructor."""

    config: SEWConfig
    checkpoint_sha256: str | None = None

    @classmethod
    def from_pretrained(cls: type[M], path_or_uri: str | Path, storage_options: dict[str, Any] | None = None,
                        dtype: torch.dtype | None = None) -> M:
        uri = str(path_or_uri)
        config_dict, state, digest = read_checkpoint_files(uri, storage_options)
        config = SEWConfig.from_dict(config_dict)
        with torch.device("meta"):  # shapes only: no random init of weights the checkpoint replaces anyway
            model = cls(config)
        state, missing = model.match_checkpoint_state(state, source=uri)
        if missing:  # weights absent from the checkpoint (a new head) are initialised fresh: build it for real
            log.warning("%s: initialised fresh (not in checkpoint): %s", uri, ", ".join(missing))
            model = cls(config)
            model.load_state_dict(state, strict=False)  # type: ignore[attr-defined]
        else:
            own = model.state_dict()  # type: ignore[attr-defined]
            model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, assign=True)  # type: ignore[attr-defined]
        model.checkpoint_sha256 = digest
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def match_checkpoint_state(self, state: dict[str, torch.Tensor], source: str = "state dict"
                               ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The checkpoint's tensors under our key names, and our keys it lacks; raises CheckpointError when a
        base weight is missing, a key is unknown, or a shape differs."""
        prefix = "" if type(self).__name__ == "SEWModel" else "sew."
        state = to_our_keys(state, prefix)
        own = self.state_dict()  # type: ignore[attr-defined]
        unexpected = sorted(k for k in state if k not in own)
        # A head absent from a base checkpoint stays initialised; a missing base weight is an error.
        missing = sorted(k for k in own if k not in state)
        missing_base = [k for k in missing if k.startswith(prefix) and k[len(prefix):].split(".")[0] != "masked_spec_embed"]
        dropped_head = [k for k in unexpected if k.split(".")[0] in {"lm_head", "projector", "classifier", "layer_weights"}]
        if missing_base or set(unexpected) - set(dropped_head):
            raise CheckpointError(
                f"{source} does not match {type(self).__name__}: missing {missing_base[:8]}, "
                f"unexpected {sorted(set(unexpected) - set(dropped_head))[:8]}"
            )
        for key in state:
            if key in own and own[key].shape != state[key].shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(state[key].shape)}, "
                                      f"model expects {tuple(own[key].shape)}")
        return {k: v for k, v in state.items() if k in own}, missing

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors in the layout transformers reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        config.setdefault("dtype", "float32")
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        save_file(to_saved_keys(state), str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
        return directory
