"""Qwen 2 / 2.5 / 3: Llama's blocks with RoPE in HF's half-split ("neox") layout.

Qwen 2's q/k/v biases and Qwen 3's per-head q/k norms are picked up by LlamaBlock from the file's tensors.
"""

from __future__ import annotations

from .llama import Llama


class Qwen(Llama):
    rope_style = "neox"
