"""Open a model by path: a GGUF file, or a Hugging Face folder presented with the same interface."""

from __future__ import annotations

import os
from typing import Any

from .gguf import GGUFFile


def open_model_file(path: str | os.PathLike) -> Any:
    """A GGUFFile for a .gguf path, an HFCheckpoint (formats/hf_folder.py) for a folder."""
    if os.path.isdir(path):
        from .hf_folder import HFCheckpoint  # only folders need it (keeps `inspect` of a GGUF file light)

        return HFCheckpoint.open(path)
    return GGUFFile.open(path)
