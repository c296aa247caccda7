"""HF transformers' loading of a GGUF file, without the work it repeats (for `bench --vs transformers` and the tests'
references).

Transformers parses the file once per thing it loads from it (tokenizer, config, weights: ~9 s apiece for a
262k-token vocabulary), and builds the same tensor-name map for each of the model's hundreds of modules (~10 ms
each). While `shared_parse` is active, every parse of the file is served by one reader of the gguf package and each
map is built once; what transformers does with them is unchanged.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def shared_parse(path: str | Path, reader=None):
    """Transformers' loads of `path` inside the block share `reader` (a gguf.GGUFReader of it; parsed here when
    None). Not thread-safe: it replaces two functions of the gguf module until the block ends."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(path) if reader is None else reader
    open_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = lambda asked, *args, **kwargs: (reader if Path(asked) == path
                                                      else open_reader(asked, *args, **kwargs))
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield reader
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = open_reader, name_map
