"""A rank's slices of the model file, presented by GGUF name as the whole tensors are (models/weights.py).

Rows of a GGUF matrix are contiguous runs of blocks, so a slice of rows, or of whole blocks within every row, is
still the tensor's own block format: the backend packs it as it packs a whole tensor, and nothing is requantized.
Only the slices are read from the mapped file; the copies go once packed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import ShardingError
from ..formats.gguf import TensorInfo
from ..models.weights import GGUFWeights
from ..quant import GGMLType
from ..quant.types import BLOCK_GEOMETRY
from .plan import RankShare


def _rows_of_heads(heads, head_dim: int) -> np.ndarray:
    """The rows (or bias elements) of the given heads, in order: (len(heads) * head_dim,)."""
    return np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def sliced_entry(info: TensorInfo, rows, columns: range | None) -> TensorInfo:
    """The entry of a slice of a stored tensor: `rows` (indices into its second-innermost axis, or into the elements
    of a 1-d tensor) and `columns` (a range of its row, on block boundaries), without reading any bytes."""
    geometry = BLOCK_GEOMETRY[GGMLType(info.ggml_type)]
    shape = list(reversed(info.shape))  # row-major
    if rows is not None:
        shape[-2 if len(shape) > 1 else 0] = len(rows)
    if columns is not None:
        if columns.start % geometry.block_size or columns.stop % geometry.block_size:
            raise ShardingError(f"tensor {info.name!r} ({GGMLType(info.ggml_type).name}, blocks of "
                                f"{geometry.block_size}) cannot be split at columns {columns.start}..{columns.stop}")
        shape[-1] = len(columns)
    nbytes = int(np.prod(shape)) // geometry.block_size * geometry.type_size
    return replace(info, shape=tuple(reversed(shape)), nbytes=nbytes)


def take(raw: np.ndarray, info: TensorInfo, rows=None, columns: range | None = None) -> np.ndarray:
    """The bytes of the slice `sliced_entry` describes, copied out of the stored tensor's bytes `raw`."""
    sliced_entry(info, rows, columns)  # refuses a cut inside a block
    geometry = BLOCK_GEOMETRY[GGMLType(info.ggml_type)]
    shape = list(reversed(info.shape))
    if len(shape) == 1:  # a vector (float types only: blocks of one value)
        data = raw.reshape(shape[0], geometry.type_size)
        return np.ascontiguousarray(data if rows is None else data[rows]).reshape(-1)
    block = geometry.block_size
    data = raw.reshape(*shape[:-1], shape[-1] // block, geometry.type_size)  # (..., rows, blocks, bytes)
    if rows is not None:
        data = np.take(data, rows, axis=-3)
    if columns is not None:
        data = data[..., columns.start // block:columns.stop // block, :]
    return np.ascontiguousarray(data).reshape(-1)


class ShardedWeights(GGUFWeights):
    """The model file as rank `share.rank` sees it: attention tensors (and sinks) of its heads, MLP and expert tensors
    (and the experts' gate/up biases) of its hidden units (every other tensor whole, but for "sum"'s expert down
    biases, which only rank 0 has; the output projection's vocabulary rows are cut by the backend, since a tied table
    is also the whole embedding)."""

    def __init__(self, gguf, backend, share: RankShare, head_dim: int, reduction: str):
        super().__init__(gguf, backend)
        heads = share.heads
        q_rows, kv_rows = _rows_of_heads(heads.q_heads, head_dim), _rows_of_heads(heads.kv_heads, head_dim)
        # The attention output and down projections: "sum" cuts their input columns, "exact" their output rows.
        model_rows = np.arange(share.model_rows.start, share.model_rows.stop)
        q_columns = range(heads.q_heads.start * head_dim, heads.q_heads.stop * head_dim)
        by_rows = reduction == "exact"
        # GGUF name suffix -> (rows, columns) of this rank's slice
        self.cuts: dict[str, tuple] = {
            "attn_q.weight": (q_rows, None), "attn_q.bias": (q_rows, None),
            "attn_k.weight": (kv_rows, None), "attn_k.bias": (kv_rows, None),
            "attn_v.weight": (kv_rows, None), "attn_v.bias": (kv_rows, None),
            "attn_output.weight": (model_rows, None) if by_rows else (None, q_columns),
            "attn_sinks.weight": (np.arange(heads.q_heads.start, heads.q_heads.stop), None)}  # one per query head
        for suffix, units in (("", share.ffn), ("_exps", share.expert_ffn), ("_shexp", share.shared_ffn)):
            if units is not None:
                self.cuts.update({f"ffn_gate{suffix}.weight": (np.arange(units.start, units.stop), None),
                                  f"ffn_up{suffix}.weight": (np.arange(units.start, units.stop), None),
                                  f"ffn_down{suffix}.weight": (model_rows, None) if by_rows else (None, units)})
        if share.expert_ffn is not None:  # gpt-oss: per expert (n_experts, width), its hidden units' biases
            self.cuts.update({f"ffn_{part}_exps.bias": (None, share.expert_ffn) for part in ("gate", "up")})
        # "sum": the experts' down biases are added to partial sums before the all-reduce, so by rank 0 alone
        # ("exact" adds them to the whole rows the ranks gathered)
        self.absent = {"ffn_down_exps.bias"} if not by_rows and share.rank != 0 else set()

    def has(self, name: str) -> bool:
        return super().has(name) and not (name.startswith("blk.") and name.split(".", 2)[2] in self.absent)

    def _cut(self, name: str) -> tuple | None:
        return self.cuts.get(name.split(".", 2)[2]) if name.startswith("blk.") else None

    def entry(self, name: str) -> TensorInfo:
        info = super().entry(name)
        cut = self._cut(name)
        return info if cut is None else sliced_entry(info, *cut)

    def raw(self, name: str) -> np.ndarray:
        data = super().raw(name)
        cut = self._cut(name)
        return data if cut is None else take(data.view(np.uint8), super().entry(name), *cut)


class VocabRows:
    """A weight source presenting rows `rows` of the output projection (vocab_size, width) only: a WeightSource
    (backends/base.py) for the backend that places this rank's part of it."""

    def __init__(self, source: GGUFWeights, rows: range, vocab_size: int):
        self.source, self.rows, self.vocab_size = source, rows, vocab_size

    def info(self, name: str, expected_shape: tuple[int, ...]) -> TensorInfo:
        whole = self.source.info(name, (self.vocab_size, expected_shape[1]))
        return sliced_entry(whole, self.rows, None)

    def raw(self, name: str) -> np.ndarray:
        return take(self.source.raw(name).view(np.uint8), self.source.entry(name), np.arange(self.rows.start,
                                                                                            self.rows.stop))

    def tensor(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        whole = self.source.tensor(name, (self.vocab_size, expected_shape[1]))  # shared with a tied embedding
        return whole[self.rows.start:self.rows.stop]

    def release_pages(self) -> None:
        self.source.release_pages()
