"""Shipped default models, selectable by name (`demo-ctc`, `demo-kws`), so no hub download is ever needed."""
from __future__ import annotations

from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "assets" / "models"


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / "config.json").exists()) if SHIPPED_ROOT.exists() else []


def resolve_model(name_or_uri: str) -> str:
    """A shipped model's folder for its name; any other path or URI is returned unchanged."""
    candidate = SHIPPED_ROOT / name_or_uri
    if "/" not in name_or_uri and (candidate / "config.json").exists():
        return str(candidate)
    return name_or_uri
