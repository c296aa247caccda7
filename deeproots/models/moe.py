"""A mixture of experts in place of a block's MLP (Mixtral, Qwen 2 / 3 MoE, OLMoE, gpt-oss), by llama.cpp's names.

A router (`ffn_gate_inp`) scores every expert for every token; each token goes to its top-k experts, whose gated
MLPs (slices of the 3-d `ffn_{gate,up,down}_exps` tensors) are summed with the router's probabilities as weights.
Qwen 2 MoE adds a shared expert (`ffn_{gate,up,down}_shexp`) that every token takes, scaled by a sigmoid gate of
its own (`ffn_gate_inp_shexp`). gpt-oss adds biases to the router (`ffn_gate_inp.bias`) and to every expert's
products (`ffn_{gate,up,down}_exps.bias`, one row per expert); models/gpt_oss.py has its routing and gating.

The products are grouped by expert: the rows routed to one expert are gathered and multiplied together, so a step
reads only the weights of the experts some token chose, each once, and all the chosen experts of one matrix run in
one call (on the CPU backend one threaded kernel call, kernels.experts_linear, which takes each pair's token row by
index: a token routed to k experts is quantized once, not copied k times). A token's result depends only on its
own row: the kernels are row-invariant and its experts' contributions are added in its own slot order.
"""

from __future__ import annotations

import numpy as np

from ..config import ExpertConfig, ModelConfig
from ..errors import ModelFormatError
from .weights import GGUFWeights


class MixtureOfExperts:
    shared_class: type  # SharedExpert, or a backend's variant of it (set below, once SharedExpert is defined)

    def __init__(self, config: ModelConfig, weights: GGUFWeights, prefix: str):
        self.experts = _expert_config(config, weights, prefix)
        c, e = config, self.experts
        self.ops = weights.primitives
        self.ffn_gate_inp = weights.linear(prefix + "ffn_gate_inp.weight", c.d_model, e.count)  # (N, E) logits
        self.ffn_gate_inp_bias = weights.optional_stack([prefix + "ffn_gate_inp.bias"], [e.count])  # (E,) or None
        # per expert, the biases of gate and up side by side (E, 2 * expert ffn_dim) and of down (E, d_model); or None
        self.gate_up_bias = _expert_biases(weights, [prefix + "ffn_gate_exps.bias", prefix + "ffn_up_exps.bias"],
                                           e.count, [e.ffn_dim, e.ffn_dim])
        self.down_bias = _expert_biases(weights, [prefix + "ffn_down_exps.bias"], e.count, [c.d_model])
        # per expert, gate and up in one product: (M, d_model) -> (M, 2 * expert ffn_dim)
        self.ffn_gate_up_exps = weights.expert_linears([prefix + "ffn_gate_exps.weight", prefix + "ffn_up_exps.weight"],
                                                       e.count, c.d_model, [e.ffn_dim, e.ffn_dim])
        self.ffn_down_exps = weights.expert_linears([prefix + "ffn_down_exps.weight"], e.count, e.ffn_dim, [c.d_model])
        self.shared = self.shared_class(c, weights, prefix) if e.shared_ffn_dim is not None else None

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """(N, d_model) -> (N, d_model)."""
        ids, weights = self.route(h)
        out = self.experts_output(h, ids, weights)
        if self.shared is not None:
            out += self.shared(h)
        return out

    def router_logits(self, h: np.ndarray) -> np.ndarray:
        """(N, d_model) -> (N, n_experts), with the router's bias if it has one."""
        logits = self.ffn_gate_inp(h)
        if self.ffn_gate_inp_bias is not None:
            logits += self.ffn_gate_inp_bias
        return logits

    def route(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The experts each row of h (N, d_model) goes to and their weights: (N, top_k) ids and (N, top_k) float32."""
        return self.ops.route(self.router_logits(h), self.experts.used_count, self.experts.normalize_weights)

    def gate(self, gate_up: np.ndarray) -> np.ndarray:
        """An expert's gating of its [gate | up] rows (M, 2 * expert ffn_dim) -> (M, expert ffn_dim): SiLU."""
        return self.ops.silu_mul(gate_up)

    def experts_output(self, h: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """sum over k of weights[:, k] * expert ids[:, k](h): each chosen expert's product over its rows only, all
        of them in one grouped call per matrix."""
        n, k = ids.shape
        order = np.argsort(ids, axis=None, kind="stable")  # (N * k,) the (token, slot) pairs grouped by expert
        sorted_ids = ids.reshape(-1)[order]
        if n == 1:  # decode: a token's k experts are distinct, one row each
            starts, chosen = np.arange(k + 1, dtype=np.int64), sorted_ids
        else:  # where each expert's rows begin, and N * k
            starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1, append=-1))
            chosen = sorted_ids[starts[:-1]]  # ascending
        # each pair reads its token's row of h: (N * k, 2 * expert ffn_dim)
        gate_up = self.ffn_gate_up_exps.grouped(h, chosen, starts, order // k)
        if self.gate_up_bias is not None:
            gate_up += self.gate_up_bias[sorted_ids]  # each row its own expert's bias
        expert_out = self.ffn_down_exps.grouped(self.gate(gate_up), chosen, starts)  # (N * k, d_model)
        if self.down_bias is not None:
            expert_out += self.down_bias[sorted_ids]
        # Weighted and summed over each token's own slots, in its own order: the same bits whoever shares its experts.
        return self.ops.combine_experts(expert_out, weights, order)  # (N, d_model)


class SharedExpert:
    """Qwen 2 MoE's expert every token takes: a gated MLP scaled by sigmoid(h . ffn_gate_inp_shexp)."""

    def __init__(self, config: ModelConfig, weights: GGUFWeights, prefix: str):
        c, width = config, config.experts.shared_ffn_dim
        self.ops = weights.primitives
        gate_up = [prefix + "ffn_gate_shexp.weight", prefix + "ffn_up_shexp.weight"]
        self.ffn_gate_up_shexp = weights.stacked_linear(gate_up, c.d_model, [width, width])  # (N, 2 * width)
        self.ffn_down_shexp = weights.linear(prefix + "ffn_down_shexp.weight", width, c.d_model)
        self.ffn_gate_inp_shexp = weights.linear(prefix + "ffn_gate_inp_shexp.weight", c.d_model, 1)  # (N, 1)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """(N, d_model) -> (N, d_model)."""
        gate = self.sigmoid(self.ffn_gate_inp_shexp(h))  # (N, 1)
        return gate * self.ffn_down_shexp(self.ops.silu_mul(self.ffn_gate_up_shexp(h)))

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative gates: the sigmoid is then 0
            return 1.0 / (1.0 + np.exp(-x))


MixtureOfExperts.shared_class = SharedExpert


def _expert_biases(weights: GGUFWeights, names: list[str], count: int, widths: list[int]) -> np.ndarray | None:
    """Per-expert bias rows of the named 2-d tensors (count, widths[i]) side by side: (count, sum(widths)) float32,
    or None when the file has none of them (a partial set is a ModelFormatError naming the missing one)."""
    if not weights.has_all(names):
        return None
    return weights.backend.vector(np.concatenate([weights.tensor(name, (count, width))
                                                  for name, width in zip(names, widths)], axis=1))


def _expert_config(config: ModelConfig, weights: GGUFWeights, prefix: str) -> ExpertConfig:
    """The config's expert counts, checked against the router's and the experts' tensors (errors name the key)."""
    key = f"{config.architecture}.expert_count"
    if config.experts is None:
        raise ModelFormatError(f"tensor {prefix}ffn_gate_inp.weight routes to experts, but metadata key {key!r} "
                               "is missing", field=key)
    count = config.experts.count
    for name in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        stored = weights.stored_shape(f"{prefix}{name}.weight")[0]  # experts are the outermost dimension
        if stored != count:
            raise ModelFormatError(f"tensor {prefix}{name}.weight holds {stored} experts, metadata key {key!r} "
                                   f"says {count}", field=key)
    return config.experts
