"""Open a model by path: a GGUF file, or a Hugging Face folder presented with the same interface.

It sits above formats/ and tokenizer/ because a folder needs both: its tensors and config are read by
formats/hf_folder.py, its tokenizer.json turned into GGUF tokenizer metadata by tokenizer/hf_folder.py.
"""

from __future__ import annotations

import os
from typing import Any

from .formats.gguf import GGUFFile


def open_model_file(path: str | os.PathLike) -> Any:
    """A GGUFFile for a .gguf path, an HFCheckpoint (formats/hf_folder.py) for a folder."""
    if os.path.isdir(path):
        return open_hf_folder(path)
    return GGUFFile.open(path)


def open_hf_folder(folder: str | os.PathLike) -> Any:
    """An HFCheckpoint with the folder's tokenizer in GGUF metadata form (only folders need these imports)."""
    from .formats.hf_folder import HFCheckpoint
    from .tokenizer.hf_folder import tokenizer_metadata_from_hf

    return HFCheckpoint.open(folder, tokenizer_metadata_from_hf)
