"""What a loaded Model keeps alive (docs/benchmarks.md, "Start-up and memory"): the tokenizer answers from its own
compact copies, so neither the file's per-token arrays nor any list of every token's text stays reachable."""

import gc
import types

import numpy as np

from deeproots.formats.gguf import GGUFFile
from deeproots.tokenizer.vocab import VOCABULARY_KEYS


def reachable(root, limit: int = 200_000):
    """Every object reachable from `root` through references, leaving out modules, classes and functions."""
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack = {id(root)}, [root]
    while stack:
        obj = stack.pop()
        yield obj
        for child in gc.get_referents(obj):
            if id(child) not in seen and not isinstance(child, skip):
                seen.add(id(child))
                stack.append(child)
        assert len(seen) < limit, "the walk reached far more objects than a model holds"


def test_model_keeps_no_vocabulary_arrays(smollm2, smollm2_path):
    metadata = smollm2.file.metadata
    assert not set(VOCABULARY_KEYS) & set(metadata)
    assert metadata["general.architecture"] == "llama"  # the rest of the metadata stays
    with GGUFFile.open(smollm2_path) as fresh:  # `inspect` and `convert` open the file afresh: all keys are there
        tokens = fresh.metadata["tokenizer.ggml.tokens"]
        assert set(VOCABULARY_KEYS) - {"tokenizer.ggml.scores"} <= set(fresh.metadata)
    assert [smollm2.tokenizer.token_text(i) for i in range(len(tokens))] == tokens


def test_no_token_strings_nor_dense_tables_are_reachable_from_the_model(smollm2):
    vocab_size, width = smollm2.tokenizer.vocab_size, smollm2.config.d_model
    for obj in reachable(smollm2):
        if isinstance(obj, (list, tuple, dict, set, frozenset)) and len(obj) >= vocab_size // 2:
            sample = next(iter(obj))
            assert not isinstance(sample, (str, bytes)), f"a {type(obj).__name__} of {len(obj)} token strings"
        dense = isinstance(obj, np.ndarray) and obj.dtype.kind == "f"
        assert not dense or tuple(obj.shape) not in ((vocab_size, width), (width, vocab_size)), \
            "a dense copy of the embedding / output table (the fast path keeps both packed)"
