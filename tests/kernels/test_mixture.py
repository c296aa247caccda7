"""kernels.route and kernels.combine_experts against float64 softmax and the formulas of backends/formulas.py, within
the bounds documented in deeproots/kernels/mixture.py; rows independent of the call; bad arguments."""

import numpy as np
import pytest

from deeproots import kernels
from deeproots.backends import formulas
from deeproots.errors import InternalError, RequestError

U = 2.0**-24  # f32 unit roundoff
SHAPES = [(1, 64, 8), (300, 64, 8), (7, 60, 4), (5, 8, 8), (4, 128, 1), (0, 16, 2)]  # (tokens, experts, top_k)


def logits_of(n: int, experts: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, experts)) * 4).astype(np.float32)


def exact_route(logits: np.ndarray, top_k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The top_k largest logits (a stable sort: the lower id first on ties) and their softmax in float64."""
    wide = logits.astype(np.float64)
    ids = np.argsort(-wide, axis=-1, kind="stable")[:, :top_k]
    shifted = np.exp(wide - wide.max(axis=-1, keepdims=True))
    chosen = np.take_along_axis(shifted, ids, axis=-1)
    return ids, chosen / (chosen if normalize else shifted).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("n, experts, top_k", SHAPES)
def test_route_is_the_exact_softmax_rounded_once(n, experts, top_k, normalize):
    logits = logits_of(n, experts)
    ids, weights = kernels.route(logits, top_k, normalize)
    exact_ids, exact_weights = exact_route(logits, top_k, normalize)
    assert ids.dtype == np.int64 and weights.dtype == np.float32 and ids.shape == weights.shape == (n, top_k)
    np.testing.assert_array_equal(ids, exact_ids)
    assert np.all(np.abs(weights - exact_weights) <= U * exact_weights)


@pytest.mark.parametrize("normalize", [False, True])
def test_route_picks_what_the_formula_picks(normalize):
    """Away from ties of rounded probabilities the kernel's experts are the formula's, and its weights within 1u
    of the formula's float32 probabilities' own error."""
    logits = logits_of(300, 64, seed=1)
    ids, weights = kernels.route(logits, 8, normalize)
    formula_ids, formula_weights = formulas.route(logits, 8, normalize)
    np.testing.assert_array_equal(ids, formula_ids)
    np.testing.assert_allclose(weights, formula_weights, rtol=1e-6)


def test_route_breaks_ties_to_the_lower_id_and_keeps_ids_distinct_through_nans():
    logits = np.array([[0.5, 2.0, 2.0, -1.0, 2.0], [np.nan, 1.0, 3.0, np.nan, 0.0]], np.float32)
    ids, weights = kernels.route(logits, 3, False)
    np.testing.assert_array_equal(ids[0], [1, 2, 4])
    np.testing.assert_allclose(weights[0], np.full(3, 1 / (3 + np.exp(-1.5) + np.exp(-3.0))), rtol=2 * U)
    assert len(set(ids[1])) == 3 and all(0 <= i < 5 for i in ids[1])  # NaN weights, as the formula's


def test_a_row_is_routed_alike_alone_and_in_a_batch():
    logits = logits_of(40, 64, seed=2)
    together = kernels.route(logits, 8, True)
    for t in range(len(logits)):
        alone = kernels.route(logits[t:t + 1], 8, True)
        np.testing.assert_array_equal(alone[0][0], together[0][t])
        np.testing.assert_array_equal(alone[1][0], together[1][t])


def expert_rows(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows (n * k, d), weights (n, k), order): random pairs grouped by a random expert, as a mixture sorts them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 16, (n, k))
    order = np.argsort(ids, axis=None, kind="stable")
    return rng.standard_normal((n * k, d), dtype=np.float32), rng.random((n, k), dtype=np.float32), order


@pytest.mark.parametrize("n, k, d", [(1, 8, 2048), (300, 8, 2048), (7, 4, 7), (5, 1, 64), (3, 2, 1), (513, 6, 100)])
def test_combine_experts_is_the_formula_bit_for_bit(n, k, d):
    rows, weights, order = expert_rows(n, k, d)
    np.testing.assert_array_equal(kernels.combine_experts(rows, weights, order),
                                  formulas.combine_experts(rows, weights, order))


def test_combine_experts_sums_each_token_s_slots_in_order():
    """Against the definition written out in float32, product by product: slot 0, then + slot 1, ..."""
    rows, weights, order = expert_rows(9, 3, 33, seed=3)
    position = np.argsort(order)  # each pair's product row
    expected = np.empty((9, 33), np.float32)
    for t in range(9):
        acc = rows[position[3 * t]] * weights[t, 0]
        for s in (1, 2):
            acc = acc + rows[position[3 * t + s]] * weights[t, s]
        expected[t] = acc
    np.testing.assert_array_equal(kernels.combine_experts(rows, weights, order), expected)


@pytest.mark.parametrize("bad", [[0, 1, 1, 3], [0, 1, 2, 4], [-1, 0, 1, 2]])
def test_combine_experts_refuses_an_order_that_is_not_a_permutation(bad):
    rows, weights, _ = expert_rows(2, 2, 8)
    with pytest.raises(InternalError, match="permutation"):
        kernels.combine_experts(rows, weights, np.array(bad, np.int64))


@pytest.mark.parametrize("call", [
    lambda: kernels.route(logits_of(2, 8).astype(np.float64), 2, False),
    lambda: kernels.route(logits_of(2, 8)[:, ::2], 2, False),
    lambda: kernels.route(logits_of(2, 8), 0, False),
    lambda: kernels.route(logits_of(2, 8), 9, False),
    lambda: kernels.route(logits_of(2, 8), 2.0, False),
    lambda: kernels.route(logits_of(2, 8), 2, 1),
    lambda: kernels.combine_experts(*expert_rows(2, 2, 8)[:2], np.arange(4, dtype=np.int32)),
    lambda: kernels.combine_experts(expert_rows(2, 2, 8)[0][:3], *expert_rows(2, 2, 8)[1:]),
    lambda: kernels.combine_experts(expert_rows(2, 2, 8)[0], np.zeros((2, 0), np.float32), np.arange(4)),
    lambda: kernels.combine_experts(np.zeros((4, 0), np.float32), *expert_rows(2, 2, 8)[1:]),
], ids=["float64 logits", "strided logits", "top_k 0", "top_k past the experts", "float top_k", "int normalize",
        "int32 order", "rows short", "no slots", "no columns"])
def test_bad_arguments_raise_request_errors(call):
    with pytest.raises(RequestError):
        call()
