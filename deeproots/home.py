"""Where deeproots keeps what it downloads and derives: the store's home folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def store_home() -> Path:
    """The store folder: $DEEPROOTS_HOME, else the user's cache dir (models/ and the packed-weight cache inside)."""
    home = os.environ.get("DEEPROOTS_HOME")
    return Path(home) if home else Path(platformdirs.user_cache_dir("deeproots"))
