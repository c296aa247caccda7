"""Which part of every layer a rank computes, under Megatron's tensor parallelism.

- Attention by heads: each rank takes a contiguous run of query heads and the key/value heads they read. Whole
  groups (the query heads sharing one KV head) go to one rank whenever there are at least as many KV heads as ranks
  (evenly when n_kv_heads % tp == 0, else one group more on the first ranks); with fewer KV heads than ranks the
  query heads are split evenly and a KV head is replicated on every rank that has some of its query heads.
- The MLP (and every expert's, and a shared expert's) by hidden units: gate/up rows, down-projection columns, cut at
  the block size of the down projections' format so packed weights are sliced without requantizing; the 3-d expert
  tensors are cut the same way in every expert. The router (and a shared expert's gate) is whole on every rank, so
  every rank routes every token as one process does. Biases go with their rows (q/k/v by heads, the experts' gate/up
  by hidden units); attention sinks (gpt-oss) with their heads.
- OLMoE's q/k norms span all of a layer's heads: the ranks gather the heads for them (backend.over_all_heads).
- The output projection by vocabulary rows; the logits are gathered on rank 0.

The attention output and down projections then hold partial sums over a rank's heads or hidden units. Two ways to
finish them (`REDUCTIONS`):
- "sum", Megatron's: each projection cut by input columns, its partial products summed by one all-reduce. The sum's
  rounding differs from one process's, and the kernels' int8 activations turn that into logit differences of the
  size the fast path has against the reference (docs/distributed.md).
- "exact" (the default): the ranks' inputs to those projections are gathered, each rank computes its rows of the
  output (model width) over the whole input, and the rows are gathered: every value is computed as in one process,
  so the logits are bit-identical, for two gathers in place of one all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..config import ModelConfig
from ..errors import ShardingError
from ..quant import GGMLType
from ..quant.types import BLOCK_GEOMETRY


def balanced(total: int, parts: int) -> list[range]:
    """0..total cut into `parts` contiguous ranges whose lengths differ by at most one (longer first)."""
    base, extra = divmod(total, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + base + (part < extra))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class HeadShare:
    q_heads: range  # the global query heads this rank computes, in order
    kv_heads: tuple[int, ...]  # the global KV head behind each local KV head (one may be on several ranks)


def split_heads(n_heads: int, n_kv_heads: int, tp: int) -> list[HeadShare]:
    """Every rank's attention heads (see the module docstring); local query head i reads local KV head
    i // (local q heads / local kv heads), as the attention kernels assume."""
    if tp > n_heads:
        raise ShardingError(f"cannot split {n_heads} attention heads over {tp} ranks: every rank needs a head")
    group = n_heads // n_kv_heads
    if tp <= n_kv_heads:
        q_ranges = [range(r.start * group, r.stop * group) for r in balanced(n_kv_heads, tp)]
    else:
        q_ranges = balanced(n_heads, tp)
    shares = []
    for q in q_ranges:
        read = [head // group for head in q]  # the KV head each local query head reads
        runs = [read.count(kv) for kv in sorted(set(read))]
        # Equal runs keep grouped attention locally; unequal ones give each query head its own copy of its KV head.
        kv = tuple(sorted(set(read))) if len(set(runs)) == 1 else tuple(read)
        shares.append(HeadShare(q, kv))
    return shares


def block_size(ggml_type: int) -> int:
    return BLOCK_GEOMETRY[GGMLType(ggml_type)].block_size


def split_units(total: int, unit: int, tp: int, what: str) -> list[range]:
    """0..total cut into tp contiguous ranges at multiples of `unit` (a block), as evenly as blocks allow."""
    if total % unit or total // unit < tp:
        raise ShardingError(f"{what}: {total} values cannot be cut into {tp} parts at multiples of {unit} (the block "
                            f"size of its format)")
    return [range(r.start * unit, r.stop * unit) for r in balanced(total // unit, tp)]


@dataclass(frozen=True)
class RankShare:
    """What rank `rank` of `tp` holds: its heads, hidden units (dense MLP, experts, shared expert) and vocabulary
    rows; None where the model has no such part."""
    rank: int
    tp: int
    heads: HeadShare
    ffn: range | None
    expert_ffn: range | None
    shared_ffn: range | None
    vocab: range
    model_rows: range  # "exact": this rank's rows (of d_model) of the attention output and down projections

    def config(self, config: ModelConfig) -> ModelConfig:
        """The model's config as this rank's layers see it: its own head and hidden-unit counts."""
        experts = config.experts
        if experts is not None:
            experts = replace(experts, ffn_dim=len(self.expert_ffn) if self.expert_ffn else experts.ffn_dim,
                              shared_ffn_dim=len(self.shared_ffn) if self.shared_ffn else experts.shared_ffn_dim)
        return replace(config, n_heads=len(self.heads.q_heads), n_kv_heads=len(self.heads.kv_heads),
                       ffn_dim=len(self.ffn) if self.ffn else config.ffn_dim, experts=experts)


# The hidden-unit kinds, by the GGUF name suffix of their down projection (cut by columns).
FFN_KINDS = {"ffn": "ffn_down.weight", "expert_ffn": "ffn_down_exps.weight", "shared_ffn": "ffn_down_shexp.weight"}


def _unit(tensors: dict, down_suffix: str) -> int | None:
    """The least common multiple of the block sizes of every layer's down projection of one kind (None: none)."""
    sizes = {block_size(info.ggml_type) for name, info in tensors.items() if name.endswith("." + down_suffix)}
    return math.lcm(*sizes) if sizes else None


REDUCTIONS = ("exact", "sum")


def plan_shares(config: ModelConfig, tensors: dict, tp: int, reduction: str = "exact") -> list[RankShare]:
    """Every rank's share of the model whose file lists `tensors` (name -> TensorInfo); raises ShardingError where a
    split cannot fall on block boundaries, naming the tensor (only "sum" cuts attn_output by columns)."""
    if tp < 1:
        raise ShardingError(f"tensor parallelism needs at least 1 rank, got {tp}")
    if reduction not in REDUCTIONS:
        raise ShardingError(f"the tensor-parallel reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    heads = split_heads(config.n_heads, config.n_kv_heads, tp)
    # "sum" cuts attn_output by input columns at head boundaries: they must fall on its blocks.
    for name, info in tensors.items():
        if reduction == "sum" and name.endswith(".attn_output.weight"):
            block = block_size(info.ggml_type)
            for share in heads:
                cut = share.q_heads.start * config.head_dim
                if cut % block:
                    raise ShardingError(f"tensor {name!r} ({GGMLType(info.ggml_type).name}, blocks of {block}) cannot "
                                        f"be split at column {cut} (heads {share.q_heads.start}.. of {tp} ranks)")
    widths = {"ffn": config.ffn_dim,
              "expert_ffn": config.experts.ffn_dim if config.experts else None,
              "shared_ffn": config.experts.shared_ffn_dim if config.experts else None}
    splits: dict[str, list[range] | list[None]] = {}
    for kind, down in FFN_KINDS.items():
        unit = _unit(tensors, down)
        if unit is not None and reduction == "exact":
            unit = 1  # the down projections are cut by rows: the hidden units may be cut anywhere
        splits[kind] = [None] * tp if unit is None or widths[kind] is None else \
            split_units(widths[kind], unit, tp, f"tensors '*.{down}'")
    vocab, model_rows = balanced(config.vocab_size, tp), balanced(config.d_model, tp)
    return [RankShare(rank, tp, heads[rank], splits["ffn"][rank], splits["expert_ffn"][rank],
                      splits["shared_ffn"][rank], vocab[rank], model_rows[rank]) for rank in range(tp)]
