"""After a load: handing freed heap memory back to the operating system, and keeping what the load made out of
the cyclic garbage collector's walks.

Loading a model frees more than it keeps: the vocabulary's Python strings, the merges, the tokenizer's build
(on a thread of its own, so in a malloc arena of its own), the temporaries of repacking each weight. glibc keeps
freed memory inside its arenas for reuse unless it sits at the very top of the heap, so without a trim a process
holds ~14 MB more after load than it uses. malloc_trim(0) releases the free pages of every arena (a few ms).
"""

from __future__ import annotations

import ctypes
import gc
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _trim = ctypes.CDLL(None).malloc_trim  # the C library the process already runs on
        _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        _trim = None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS where the C library can; True when some were released."""
    return bool(_trim(0)) if _trim is not None else False


def freeze_loaded_objects() -> None:
    """Freeze every object alive now (the modules, the tokenizer's ~10^5) and turn the collector back on.

    The commands that load a model start with the cyclic GC off (cli.main): it walked the load's objects over and
    over while they were made (~30 ms for the default model). Frozen, they live as long as the process and no
    later collection walks them: not the one at exit (~20 ms), nor a server's while it decodes.
    """
    gc.freeze()
    gc.enable()


def collect_unloaded_objects() -> None:
    """After a server dropped a model: its objects were frozen when it was loaded, so no collection would ever free
    the reference cycles among them. Unfreeze, collect, freeze what is still alive again, and trim the heap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_memory()
