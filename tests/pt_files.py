"""Test helper: write a .pt file the way FLAME-MoE's dump does (``torch.save``), for tests that
build small dumps in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import torch


def save(path: Path, obj: object) -> None:
    """``torch.save(obj)`` to ``path``, creating its parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
