"""Did-you-mean for misspelt command and model names."""

from __future__ import annotations

from typing import Iterable


def did_you_mean(word: str, candidates: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """" (did you mean 'x'?)" for the n candidates closest to `word` ('x' or 'y' ...), or "" when none is close."""
    import difflib  # only when a name is unknown

    matches = difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
    return f" (did you mean {' or '.join(repr(match) for match in matches)}?)" if matches else ""
