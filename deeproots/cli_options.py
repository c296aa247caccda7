"""The command line's shared options (with llama.cpp's short flags) and how run/chat settings are resolved.

A setting comes from the command line if given there, else from the preset the model names (deeproots/preset.py),
else from CHAT_DEFAULTS. The sampling options therefore default to None ("not given") in argparse.
"""

from __future__ import annotations

import argparse
from typing import Any

from .config import DEFAULT_CONTEXT
from .preset import Preset, unescape
from .store import CATALOG, DEFAULT_MODEL

# `run` and `chat` defaults, chosen by benchmarks/chat_defaults.py on the default model (docs/cli.md has the table):
# llama.cpp's sampler with Ollama's repeat penalty and a shorter answer limit. The server keeps OpenAI's defaults.
CHAT_DEFAULTS: dict[str, Any] = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1,
                                     presence_penalty=0.0, frequency_penalty=0.0, seed=None, max_tokens=512, stop=[])
SAMPLING_NAMES = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                  "frequency_penalty", "seed")
RANDOM_SEED = -1  # llama.cpp's "pick a random seed"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def layer_list(text: str) -> list[int]:
    """`10,22`: layer indices (--pp-split)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated layer numbers, got {text!r}") from None


def natural_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed_value(text: str) -> int:
    value = int(text)
    if value < RANDOM_SEED:
        raise argparse.ArgumentTypeError(f"must be 0 or more, or -1 for a random seed; got {value}")
    return value


def add_model_option(parser: argparse.ArgumentParser) -> None:
    from .cache.kv import KV_TYPES

    parser.add_argument("-m", "--model", default=None,
                        help=f"a store name ({', '.join(sorted(CATALOG))}), a preset or a path to a .gguf file or a "
                             f"Hugging Face folder (default: {DEFAULT_MODEL})")
    add_context_option(parser)
    parser.add_argument("-t", "--threads", type=positive_int, default=None,
                        help="kernel threads (default: physical cores)")
    parser.add_argument("--kv-type", choices=list(KV_TYPES), default=None,
                        help="KV cache element type (default: f16; f32 with --reference); q8_0 stores 8.5 bits a value")
    parser.add_argument("--reference", action="store_true",
                        help="run on the reference backend, float32 numpy formulas, instead of the packed kernels "
                             "(slow; for checking)")
    add_parallel_options(parser)
    add_device_option(parser)


def add_parallel_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=positive_int, default=1,
                        help="tensor parallel: split every layer over N processes, spawned here on loopback, or "
                             "joined under torchrun (docs/distributed.md; default: 1, one process)")
    parser.add_argument("--tp-reduction", choices=["exact", "sum"], default="exact",
                        help="exact: gathers, logits bit-identical to one process (default); sum: Megatron's "
                             "all-reduce, fewer bytes, logits within the fast path's tolerance")
    parser.add_argument("--pp", type=positive_int, default=1,
                        help="pipeline parallel: cut the layers into N stages, one process each (with --tp M: M "
                             "processes each, N x M in all)")
    parser.add_argument("--pp-split", type=layer_list, default=None, metavar="L1,L2,...",
                        help="the first layer of every stage after the first, e.g. 10,22 (default: in proportion to "
                             "each host's available memory)")
    parser.add_argument("--secret-file", default=None, metavar="FILE",
                        help="under torchrun: the secret every rank proves before joining (the same file on every "
                             "host; at least 16 bytes)")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    from .device import DEVICES

    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="cpu (the C kernels), cuda (Triton kernels on an NVIDIA GPU: PyTorch with CUDA and "
                             "deeproots[cuda]) or auto (cuda when PyTorch sees a GPU); default: cpu")


def add_context_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--ctx", "--ctx-size", type=positive_int, default=None,
                        help=f"context size in tokens (default: min(model's, {DEFAULT_CONTEXT}))")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    d = CHAT_DEFAULTS
    parser.add_argument("-n", "--max-tokens", "--n-predict", type=positive_int, default=None,
                        help=f"most tokens to generate (default: {d['max_tokens']})")
    parser.add_argument("--temperature", "--temp", type=float, default=None,
                        help=f"0 is greedy (default: {d['temperature']})")
    parser.add_argument("--top-k", type=int, default=None, help=f"0 disables (default: {d['top_k']})")
    parser.add_argument("--top-p", type=float, default=None, help=f"1.0 disables (default: {d['top_p']})")
    parser.add_argument("--min-p", type=float, default=None, help=f"0 disables (default: {d['min_p']})")
    parser.add_argument("--repeat-penalty", type=float, default=None,
                        help=f"1.0 disables (default: {d['repeat_penalty']})")
    parser.add_argument("--presence-penalty", type=float, default=None)
    parser.add_argument("--frequency-penalty", type=float, default=None)
    parser.add_argument("-s", "--seed", type=seed_value, default=None,
                        help="fix the seed to reproduce a sampled answer (-1 or none: random)")
    parser.add_argument("--stop", action="append", type=unescape, default=None,
                        help=r"stop string (repeatable; \n, \t and \\ are escapes, as in llama.cpp)")
    parser.add_argument("--system", "-sys", "--system-prompt", default=None,
                        help="a system message for the chat template")
    parser.add_argument("--raw", action="store_true", help="complete the prompt as plain text, no chat template")
    parser.add_argument("--verbose", action="store_true", help="print load time and tokens/s afterwards")


def add_speculation_options(parser: argparse.ArgumentParser) -> None:
    from .speculative import SPEC_MODES, SpeculationConfig

    parser.add_argument("--spec", choices=SPEC_MODES, default="off",
                        help="speculative decoding: lookup (drafts from n-grams of the prompt and output), draft "
                             "(drafts from --draft-model) or off (default: off; docs/speculative.md)")
    parser.add_argument("--draft-model", default=None, metavar="MODEL",
                        help="the draft model of --spec draft: a store name or path, same vocabulary as the model")
    parser.add_argument("--draft-max", type=int, default=SpeculationConfig.draft_max,
                        help=f"most drafts verified per step (default: {SpeculationConfig.draft_max})")


def speculation_from(args: argparse.Namespace) -> dict[str, Any]:
    """The speculation keywords of deeproots.load from --spec, --draft-model and --draft-max (none for commands
    without them)."""
    if not hasattr(args, "spec"):
        return {}
    return dict(speculation=args.spec, draft_model=args.draft_model, draft_max=args.draft_max)


def resolve_settings(args: argparse.Namespace, preset: Preset | None) -> dict[str, Any]:
    """The run/chat settings (sampling, max_tokens, stop): command line, else preset, else CHAT_DEFAULTS."""
    given = preset.parameters if preset else {}
    settings = {}
    for name, default in CHAT_DEFAULTS.items():
        value = getattr(args, name)
        settings[name] = value if value is not None else given.get(name, default)
    return settings


def sampling_params(settings: dict[str, Any]):
    """SamplingParams from resolved settings (seed -1: random); raises RequestError on invalid values."""
    from .sampling import SamplingParams

    from .errors import RequestError

    sampling = {name: settings[name] for name in SAMPLING_NAMES}
    if sampling["seed"] is not None and sampling["seed"] < RANDOM_SEED:
        raise RequestError(f"seed must be 0 or more, or -1 for a random seed; got {sampling['seed']}")
    if sampling["seed"] == RANDOM_SEED:
        sampling["seed"] = None
    return SamplingParams(**sampling)
