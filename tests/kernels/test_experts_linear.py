"""experts_linear, several experts' products in one threaded call, against quantized_linear on each expert's rows
alone: the same bits for every type, thread count and row split (quantized_linear itself is held to the float64
reference in test_quantized_matmul.py)."""

import numpy as np
import pytest
from test_quantized_matmul import ROW_LENGTHS, random_raw

from deeproots.errors import RequestError
from deeproots.kernels import experts_linear, get_num_threads, kernel_types, pack_weight, quantized_linear, \
    set_num_threads
from deeproots.quant.types import GGMLType


def experts(ggml_type: int, k: int, n: int, count: int, rng: np.random.Generator) -> tuple:
    return tuple(pack_weight(random_raw(GGMLType(ggml_type), k, n, rng), ggml_type, (k, n)) for _ in range(count))


def one_by_one(x: np.ndarray, weights: tuple, starts: np.ndarray) -> np.ndarray:
    return np.concatenate([quantized_linear(x[a:b], w) for w, a, b in zip(weights, starts[:-1], starts[1:])])


@pytest.mark.parametrize("ggml_type", sorted(kernel_types()), ids=lambda t: GGMLType(t).name)
@pytest.mark.parametrize("rows", [[1] * 8, [3, 0, 17, 1], [40, 2, 9]], ids=["decode", "uneven", "prefill"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_each_row_gets_the_bits_of_its_expert_alone(ggml_type, rows, threads):
    rng = np.random.default_rng(len(rows))
    k, n = ROW_LENGTHS[ggml_type][-1], 40
    weights = experts(ggml_type, k, n, len(rows), rng)
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    x = rng.standard_normal((starts[-1], k)).astype(np.float32)
    before = get_num_threads()
    try:
        set_num_threads(threads)
        np.testing.assert_array_equal(experts_linear(x, weights, starts), one_by_one(x, weights, starts))
    finally:
        set_num_threads(before)


@pytest.mark.parametrize("ggml_type", sorted(kernel_types()), ids=lambda t: GGMLType(t).name)
@pytest.mark.parametrize("tokens,k", [(1, 8), (5, 2), (70, 4)], ids=["decode", "prefill", "prefill-shared"])
@pytest.mark.parametrize("threads", [1, 2])
def test_rows_by_index_get_the_bits_of_the_gathered_rows(ggml_type, tokens, k, threads):
    """A mixture's call: each token's row feeds k experts (pairs sorted by expert, as models/moe.py sorts them): the
    indexed product equals the product over x[rows] copied out, bit for bit, with the rows of an expert consecutive
    in x (decode) or scattered (prefill; 70 tokens quantize in one shared pass)."""
    rng = np.random.default_rng(tokens)
    n_experts, width, n = 10, ROW_LENGTHS[ggml_type][-1], 24
    ids = np.stack([rng.permutation(n_experts)[:k] for _ in range(tokens)])  # (tokens, k) distinct experts per token
    order = np.argsort(ids, axis=None, kind="stable")
    by_expert = ids.reshape(-1)[order]
    starts = np.searchsorted(by_expert, np.arange(n_experts + 1)).astype(np.int64)
    weights = experts(ggml_type, width, n, n_experts, rng)
    x = rng.standard_normal((tokens, width)).astype(np.float32)
    rows = order // k
    before = get_num_threads()
    try:
        set_num_threads(threads)
        np.testing.assert_array_equal(experts_linear(x, weights, starts, rows),
                                      experts_linear(x[rows], weights, starts))
    finally:
        set_num_threads(before)


def test_bad_arguments_are_request_errors():
    rng = np.random.default_rng(0)
    weights = experts(GGMLType.Q8_0, 64, 16, 2, rng)
    x, starts = rng.standard_normal((3, 64)).astype(np.float32), np.array([0, 1, 3])
    other = experts(GGMLType.Q8_0, 64, 32, 1, rng)
    for bad in ((x, (), starts), (x, list(weights), starts), (x, (weights[0], *other), starts),
                (x[:, :32], weights, starts), (x, weights, np.array([0, 1, 2])), (x, weights, np.array([0, 4, 3])),
                (x, weights, np.array([0, 3, 3], np.int32)), (x.astype(np.float64), weights, starts)):
        with pytest.raises(RequestError):
            experts_linear(*bad)
    for rows in (np.array([0, 3, 1]), np.array([0, -1, 1]), np.array([0, 1]), np.array([0, 1, 2], np.int32)):
        with pytest.raises(RequestError, match="rows|starts"):
            experts_linear(x, weights, starts, rows)
