"""Perplexity over a text, in context-sized chunks, as llama.cpp's llama-perplexity computes it.

The text is tokenized once and cut into chunks of `context` tokens; each chunk starts from an empty
cache (with BOS when the model adds one) and only the second half of each chunk is scored, so every
scored token sees at least context/2 tokens before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import RequestError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    stderr: float  # standard error of the perplexity estimate
    n_scored: int
    n_chunks: int


def chunk_nlls(model, text: str, context: int) -> Iterator[np.ndarray]:
    """Negative log-likelihoods (context/2 - 1,) of the scored tokens of each chunk, chunk by chunk."""
    ids = model.tokenize(text, add_bos=False)
    bos = [model.tokenizer.bos_id] if model.tokenizer.add_bos and model.tokenizer.bos_id is not None else []
    body = context - len(bos)
    if len(ids) < 2 * body:
        raise RequestError(f"the text has {len(ids)} tokens; perplexity at context {context} needs at least "
                           f"{2 * body} (two chunks)")
    first_scored = context // 2
    for start in range(0, len(ids) - body + 1, body):
        chunk = bos + ids[start:start + body]
        logits = model.logits(chunk)  # (context, vocab)
        yield token_nlls(logits[first_scored:-1], chunk[first_scored + 1:])


def token_nlls(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """-log softmax(logits[i])[targets[i]] for each row of logits (n, vocab), in float64: (n,)."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=-1)
    log_norm = top + np.log(np.exp(rows - top[:, None]).sum(axis=-1))  # (n,): log of each softmax denominator
    return log_norm - rows[np.arange(len(targets)), np.asarray(targets)]


def summarize(nlls: list[np.ndarray]) -> PerplexityResult:
    values = np.concatenate(nlls)
    mean = float(values.mean())
    # Delta method: the stderr of exp(mean NLL) is exp(mean) x the stderr of the mean (sample std, ddof 1).
    stderr = math.exp(mean) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return PerplexityResult(math.exp(mean), stderr, len(values), len(nlls))
