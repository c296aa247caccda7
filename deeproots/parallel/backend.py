"""The tensor-parallel backend: a rank's shard of every weight placed by the backend it wraps (cpu or reference).

The model code runs unchanged over this rank's heads and hidden units (plan.RankShare.config). The attention output
and down projections are finished as plan.py's reduction says: "sum" sums their partial products over the ranks
where the model asks (`reduce_shards`); "exact" gathers their inputs, computes this rank's output rows and gathers
those. The output projection's vocabulary rows are gathered on rank 0. A norm over all of a layer's heads (OLMoE's
q/k norms) runs over every rank's heads gathered (`over_all_heads`).
"""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend, Linear, WeightSource
from ..cache.kv import KVCache, KVLayout
from .group import ProcessGroup
from .plan import RankShare
from .weights import VocabRows
from .wrapping import WrappingBackend

OUTPUT_NAMES = (["output.weight"], ["token_embd.weight"])  # the output projection, untied or tied
# The projections whose inputs are a rank's heads or hidden units, by GGUF name suffix -> which RankShare part
ROW_PARALLEL = {"attn_output.weight": "heads", "ffn_down.weight": "ffn", "ffn_down_shexp.weight": "shared_ffn",
                "ffn_down_exps.weight": "expert_ffn"}


class GatheredOutput:
    """This rank's vocabulary rows of the output projection; the logits (R, vocab) on rank 0, None elsewhere."""

    def __init__(self, part: Linear, backend: "TensorParallelBackend"):
        self.part, self.backend = part, backend

    def __call__(self, hidden: np.ndarray) -> np.ndarray | None:
        if self.backend.leader is not None:
            self.backend.leader.send_logits(hidden)  # the other ranks compute their rows of the same states
        local = np.ascontiguousarray(self.part(hidden), dtype=np.float32)  # (R, this rank's vocabulary rows)
        return self.backend.group.gather_columns(local, self.backend.vocab_widths)


class GatheredRows:
    """"exact": (T, this rank's inputs) -> every rank's inputs gathered (T, in) -> this rank's output rows (T, rows)
    -> every rank's rows gathered (T, out), the same bits as the whole product in one process. Wraps a linear, or
    experts (`grouped`)."""

    def __init__(self, part, group: ProcessGroup, in_widths: list[int], out_widths: list[int]):
        self.part, self.group, self.in_widths, self.out_widths = part, group, in_widths, out_widths

    def _gathered(self, x: np.ndarray, product) -> np.ndarray:
        whole = self.group.gather_columns(np.ascontiguousarray(x, dtype=np.float32), self.in_widths, everywhere=True)
        rows = np.ascontiguousarray(product(whole), dtype=np.float32)  # (T, this rank's output rows)
        return self.group.gather_columns(rows, self.out_widths, everywhere=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._gathered(x, self.part)

    def grouped(self, x: np.ndarray, chosen: np.ndarray, starts: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
        return self._gathered(x, lambda whole: self.part.grouped(whole, chosen, starts, rows))


class TensorParallelBackend(WrappingBackend):
    def __init__(self, inner: Backend, shares: list[RankShare], group: ProcessGroup, vocab_size: int, head_dim: int,
                 reduction: str, world: ProcessGroup | None = None):
        super().__init__(inner, group, "tensor parallel", world)
        self.share, self.shares, self.reduction = shares[group.rank], shares, reduction
        self.vocab_widths, self.vocab_size = [len(s.vocab) for s in shares], vocab_size
        self.head_dim = head_dim
        # by kind ("q", "k"): the global heads each rank sends when a layer's heads are gathered, and where this
        # rank's sent heads lie among the heads it holds (fixed by the shares: not worked out again every layer)
        self.sent_heads = {kind: self._sent_heads(kind) for kind in ("q", "k")}
        self.held_heads = {"q": list(self.share.heads.q_heads), "k": list(self.share.heads.kv_heads)}
        self.own_sent = {kind: [self.held_heads[kind].index(h) for h in sent[group.rank]]
                         for kind, sent in self.sent_heads.items()}

    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        if names in OUTPUT_NAMES:
            rows = self.share.vocab
            part = self.inner.linear(VocabRows(source, rows, self.vocab_size), names, in_features, [len(rows)])
            return GatheredOutput(part, self)
        widths = self._row_parallel(names)
        if widths is None:
            return self.inner.linear(source, names, in_features, out_features)  # source gives this rank's slices
        part = self.inner.linear(source, names, sum(widths), [len(self.share.model_rows)])
        return GatheredRows(part, self.group, widths, [len(s.model_rows) for s in self.shares])

    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]):
        widths = self._row_parallel(names)
        if widths is None:
            return self.inner.expert_linears(source, names, n_experts, in_features, out_features)
        part = self.inner.expert_linears(source, names, n_experts, sum(widths), [len(self.share.model_rows)])
        return GatheredRows(part, self.group, widths, [len(s.model_rows) for s in self.shares])

    def _row_parallel(self, names: list[str]) -> list[int] | None:
        """"exact": every rank's input width of the projection `names`, when it is one the ranks finish by
        gathering; else None."""
        kind = ROW_PARALLEL.get(names[0].split(".", 2)[-1]) if self.reduction == "exact" else None
        if kind is None:
            return None
        if kind == "heads":
            return [len(s.heads.q_heads) * self.head_dim for s in self.shares]
        return [len(getattr(s, kind)) for s in self.shares]

    def _sent_heads(self, kind: str) -> list[list[int]]:
        """The global query (`kind` "q") or KV ("k") heads each rank sends when a layer's heads are gathered: its
        query heads; a KV head (replicated when there are fewer than ranks) from the first rank holding it. Ranks
        hold ascending runs of heads, so the runs side by side are the heads in order."""
        if kind == "q":
            return [list(s.heads.q_heads) for s in self.shares]
        sent, seen = [], set()
        for share in self.shares:
            sent.append([h for h in dict.fromkeys(share.heads.kv_heads) if h not in seen])
            seen.update(share.heads.kv_heads)
        return sent

    def model_heads(self, held: int, kind: str) -> int:
        return sum(len(heads) for heads in self.sent_heads[kind])

    def over_all_heads(self, heads: np.ndarray, kind: str, f):
        """Every rank's heads gathered (N, all, head_dim), f over them, this rank's heads of the result."""
        n, _, head_dim = heads.shape
        mine = np.ascontiguousarray(heads[:, self.own_sent[kind]])  # (N, sent, head_dim)
        mine = mine.reshape(n, mine.shape[1] * head_dim)
        whole = self.group.gather_columns(mine, [len(s) * head_dim for s in self.sent_heads[kind]], everywhere=True)
        return f(whole.reshape(n, -1, head_dim))[:, self.held_heads[kind]]

    def kv_cache(self, layout: KVLayout, max_tokens: int, kv_type: str | None = None) -> KVCache:
        """This rank's KV heads only."""
        local = layout._replace(n_kv_heads=len(self.share.heads.kv_heads))
        return self.inner.kv_cache(local, max_tokens, kv_type or self.default_kv_type)

    def reduce_shards(self, partial: np.ndarray) -> np.ndarray:
        if self.reduction == "exact":
            return partial  # already whole: GatheredRows
        return self.group.all_reduce_(np.ascontiguousarray(partial, dtype=np.float32))


def place_shard(file, config, inner: Backend, group: ProcessGroup, reduction: str = "exact",
                world: ProcessGroup | None = None):
    """(backend, weights, config) for this rank's layers: the TP backend over `inner`, the file's slices of this
    rank and the config its layers see (`world`: every rank, when `group` is one pipeline stage's)."""
    from .plan import plan_shares
    from .weights import ShardedWeights

    shares = plan_shares(config, file.tensors, group.world_size, reduction)
    backend = TensorParallelBackend(inner, shares, group, config.vocab_size, config.head_dim, reduction, world)
    weights = ShardedWeights(file, backend, shares[group.rank], config.head_dim, reduction)
    return backend, weights, shares[group.rank].config(config)
