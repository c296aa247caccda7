"""The `deeproots` command: run | chat | pull | list | rm | inspect."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Any, Callable

from .config import DEFAULT_CONTEXT, default_context
from .errors import DeeprootsError
from .store import CATALOG, DEFAULT_MODEL, ModelStore


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL,
                        help=f"a store name ({', '.join(sorted(CATALOG))}) or a path to a .gguf file or a Hugging Face folder "
                             f"(default: {DEFAULT_MODEL})")
    add_context_option(parser)
    parser.add_argument("--threads", type=int, default=None, help="kernel threads (default: physical cores)")
    add_kv_type_option(parser, default=None,
                       help="KV cache element type (default: f16; f32 with --reference); q8_0 stores 8.5 bits a value")
    parser.add_argument("--reference", action="store_true",
                        help="run on the reference backend, float32 numpy formulas, instead of the packed kernels "
                             "(slow; for checking)")


def add_context_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ctx", type=int, default=None,
                        help=f"context size in tokens (default: min(model's, {DEFAULT_CONTEXT}))")


def add_kv_type_option(parser: argparse.ArgumentParser, *, flag: str = "--kv-type", **options: Any) -> None:
    from .cache.kv import KV_TYPES

    parser.add_argument(flag, choices=list(KV_TYPES), **options)


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    from .sampling import SamplingParams

    defaults = SamplingParams()  # the library's defaults (llama.cpp's), stated once
    parser.add_argument("--max-tokens", type=int, default=512, help="most tokens to generate (default: 512)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help=f"0 is greedy (default: {defaults.temperature})")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help=f"0 disables (default: {defaults.top_k})")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help=f"1.0 disables (default: {defaults.top_p})")
    parser.add_argument("--min-p", type=float, default=defaults.min_p, help=f"0 disables (default: {defaults.min_p})")
    parser.add_argument("--repeat-penalty", type=float, default=defaults.repeat_penalty,
                        help=f"1.0 disables (default: {defaults.repeat_penalty})")
    parser.add_argument("--presence-penalty", type=float, default=defaults.presence_penalty)
    parser.add_argument("--frequency-penalty", type=float, default=defaults.frequency_penalty)
    parser.add_argument("--seed", type=int, default=None, help="fix the seed to reproduce a sampled answer")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
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
    """The speculation keywords of deeproots.load (and, as a SpeculationConfig, of the engine)."""
    return dict(speculation=args.spec, draft_model=args.draft_model, draft_max=args.draft_max)


def sampling_from(args: argparse.Namespace) -> dict[str, Any]:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, seed=args.seed)


def load_model(args: argparse.Namespace):
    from .memory import freeze_loaded_objects
    from .model import load

    started = time.perf_counter()
    speculation = speculation_from(args) if hasattr(args, "spec") else {}
    model = load(args.model, context=args.ctx, reference=args.reference, threads=args.threads, kv_type=args.kv_type,
                 **speculation)
    freeze_loaded_objects()
    if getattr(args, "verbose", False):
        print(f"load: {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return model


def stream_answer(model, ids: list[int], args: argparse.Namespace, params) -> str:
    """Print the answer as it is generated; return its text. Ctrl-C ends the answer early."""
    pieces: list[str] = []
    speculator = model.speculator
    drafts_before = (speculator.accepted, speculator.rejected) if speculator else (0, 0)
    started = time.perf_counter()
    first_token_at, n_tokens = None, 0
    try:
        for step in model.steps(ids, params, max_tokens=args.max_tokens, stop=args.stop):
            first_token_at = first_token_at or time.perf_counter()
            n_tokens += 1
            pieces.append(step.text)
            sys.stdout.write(step.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    print()
    if args.verbose and first_token_at is not None:
        decode_time = time.perf_counter() - first_token_at
        print(f"prompt: {len(ids)} tokens, first token after {first_token_at - started:.3f} s "
              f"({len(ids) / (first_token_at - started):.1f} tokens/s)\n"
              f"decode: {n_tokens} tokens, {max(n_tokens - 1, 0) / decode_time if decode_time else 0:.1f} tokens/s",
              file=sys.stderr)
        if speculator:
            accepted, rejected = speculator.accepted - drafts_before[0], speculator.rejected - drafts_before[1]
            print(f"speculation ({speculator.config.mode}): {accepted} draft tokens accepted, {rejected} rejected",
                  file=sys.stderr)
    return "".join(pieces)


def cmd_run(args: argparse.Namespace) -> None:
    from .sampling import SamplingParams

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    params = SamplingParams(**sampling_from(args))  # invalid values fail before the model loads
    model = load_model(args)
    if args.raw:
        ids = model.tokenize(prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = model.apply_chat_template(messages + [{"role": "user", "content": prompt}], tokenize=True)
    stream_answer(model, ids, args, params)


CHAT_HELP = """commands:
  /set temperature|top_k|top_p|min_p|repeat_penalty|max_tokens|seed VALUE
  /set system TEXT    set the system message
  /clear              forget the conversation
  /bye                leave (or Ctrl-D)
  \"\"\"               begin and end multi-line input
Ctrl-C stops the current answer."""


def read_user_message(prompt: Callable[[str], str] = input) -> str:
    line = prompt(">>> ")
    if not line.strip().startswith('"""'):
        return line
    lines = [line.strip()[3:]]
    while not lines[-1].rstrip().endswith('"""'):
        lines.append(prompt("... "))
    lines[-1] = lines[-1].rstrip()[:-3]
    return "\n".join(lines).strip()


def cmd_chat(args: argparse.Namespace) -> None:
    from .sampling import SamplingParams

    settings = sampling_from(args)
    SamplingParams(**settings)
    model = load_model(args)
    system: str | None = None
    history: list[dict[str, str]] = []
    print("Type a message; /? for help.", file=sys.stderr)
    while True:
        try:
            message = read_user_message()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\nUse Ctrl-D or /bye to leave.", file=sys.stderr)
            continue
        command = message.strip()
        if not command:
            continue
        if command in ("/bye", "/exit"):
            return
        if command in ("/?", "/help"):
            print(CHAT_HELP)
            continue
        if command == "/clear":
            history.clear()
            print("Cleared the conversation.", file=sys.stderr)
            continue
        if command.startswith("/set "):
            system = apply_setting(command[5:], settings, args, system)
            continue
        if command.startswith("/"):
            print(f"Unknown command {command.split()[0]!r}; /? lists the commands.", file=sys.stderr)
            continue
        history.append({"role": "user", "content": message})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = model.apply_chat_template(messages, tokenize=True)
        try:
            answer = stream_answer(model, ids, args, SamplingParams(**settings))
        except DeeprootsError as error:
            history.pop()
            print(f"error: {error}", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": answer})


def apply_setting(text: str, settings: dict[str, Any], args: argparse.Namespace, system: str | None) -> str | None:
    """Handle `/set NAME VALUE`; returns the (possibly new) system message."""
    from .sampling import SamplingParams

    name, _, value = text.strip().partition(" ")
    if name == "system":
        print("Set the system message.", file=sys.stderr)
        return value.strip() or None
    numeric = {"temperature": float, "top_k": int, "top_p": float, "min_p": float, "repeat_penalty": float,
               "presence_penalty": float, "frequency_penalty": float, "seed": int, "max_tokens": int}
    if name not in numeric:
        print(f"Unknown setting {name!r}; settings: system, {', '.join(numeric)}", file=sys.stderr)
        return system
    try:
        parsed = numeric[name](value)
        if name == "max_tokens":
            if parsed < 1:
                raise ValueError
            args.max_tokens = parsed
        else:
            SamplingParams(**{**settings, name: parsed})
            settings[name] = parsed
    except (ValueError, DeeprootsError) as error:
        print(f"Invalid value for {name}: {value!r} {error}", file=sys.stderr)
        return system
    print(f"Set {name} to {parsed}.", file=sys.stderr)
    return system


def cmd_pull(args: argparse.Namespace) -> None:
    stored = ModelStore().pull(args.name)
    print(f"{stored.name}: {stored.path} (sha256 {stored.sha256})")


def cmd_list(args: argparse.Namespace) -> None:
    from .inspect import human_bytes, summarize

    models = ModelStore().list()
    if not models:
        print(f"No models stored yet; `deeproots pull {DEFAULT_MODEL}` fetches the default one.")
        return
    print(f"{'NAME':<20} {'SIZE':>10} {'QUANT':<8} {'ARCH':<10} PATH")
    for stored in models:
        summary = summarize(stored.path)
        print(f"{stored.name:<20} {human_bytes(stored.size):>10} {summary.quantization:<8} "
              f"{summary.architecture:<10} {stored.path}")


def cmd_rm(args: argparse.Namespace) -> None:
    ModelStore().remove(args.name)
    print(f"Removed {args.name}.")


def cmd_inspect(args: argparse.Namespace) -> None:
    from .inspect import human_bytes, human_count, summarize

    summary = summarize(ModelStore().resolve(args.model, pull=False))
    c = summary.config
    rows = [
        ("file", f"{summary.path} ({human_bytes(summary.file_size)})"),
        ("name", summary.name),
        ("architecture", summary.architecture),
        ("parameters", human_count(summary.n_params)),
        ("quantization", summary.quantization),
        ("tensor types", ", ".join(f"{name} x{count}" for name, count in summary.tensor_types.items())),
        ("context length", str(c.context_length) if c else "?"),
        ("layers / width / heads", f"{c.n_layers} / {c.d_model} / {c.n_heads} (kv {c.n_kv_heads})" if c else "?"),
        ("vocabulary", f"{summary.vocab_size} tokens"),
        ("chat template", "yes" if summary.has_chat_template else "no (use --raw)"),
    ]
    context = args.ctx or default_context(c)
    kv = summary.kv_cache_bytes(context, args.kv_type)
    if kv is None:
        memory = f"weights {human_bytes(summary.weight_bytes)}; no {args.kv_type} KV cache for this model"
    else:
        memory = (f"{human_bytes(summary.weight_bytes + kv)} (weights {human_bytes(summary.weight_bytes)} + "
                  f"{args.kv_type} KV cache {human_bytes(kv)})")
    rows.append((f"memory at ctx {context}", memory))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def cmd_bench(args: argparse.Namespace) -> None:
    import json

    from tqdm import tqdm

    from .bench import DeeprootsEngine, LlamaCppEngine, TransformersEngine, benchmark_tokens, run_benchmark
    from .inspect import human_bytes, human_count, summarize
    from .kernels import get_num_threads

    args.ctx = args.ctx or max(args.n_prompt, args.n_gen, 1)
    model = load_model(args)
    threads = args.threads or get_num_threads()
    engines = [DeeprootsEngine(model), *(DeeprootsEngine(model, kv_type) for kv_type in args.vs_kv_type)]
    for other in args.vs:
        if other == "llama.cpp":
            engines.append(LlamaCppEngine(model.path, args.ctx, threads))
        else:
            engines.append(TransformersEngine(model.path))
    tokens = benchmark_tokens(model.config.vocab_size, max(args.n_prompt, args.n_gen))
    with tqdm(total=len(engines) * args.repetitions * (bool(args.n_prompt) + bool(args.n_gen)),
              desc="bench", disable=args.json, leave=False) as bar:
        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()
        results = run_benchmark(engines, tokens, args.n_prompt, args.n_gen, args.repetitions, progress)
    summary = summarize(model.path)
    if args.json:
        print(json.dumps({"model": str(model.path), "size": summary.file_size, "params": summary.n_params,
                          "threads": threads, "results": [
                              {"engine": r.engine, "test": r.test, "tokens_per_second": r.tokens_per_second,
                               "mean": r.mean, "std": r.std} for r in results]}, indent=2))
        return
    model_name = f"{summary.architecture} {summary.quantization}"
    baseline = {r.test: r.mean for r in results if r.engine == engines[0].name}
    print(f"| {'model':<16} | {'size':>9} | {'params':>7} | {'engine':<22} | {'threads':>7} | {'test':>6} "
          f"| {'t/s':>17} | {'deeproots is':>12} |")
    print(f"| {'-' * 16} | {'-' * 8}: | {'-' * 6}: | {'-' * 22} | {'-' * 6}: | {'-' * 5}: | {'-' * 16}: "
          f"| {'-' * 11}: |")
    for r in results:
        ratio = baseline[r.test] / r.mean
        print(f"| {model_name:<16} | {human_bytes(summary.file_size):>9} | {human_count(summary.n_params):>7} "
              f"| {r.engine:<22} | {threads:>7} | {r.test:>6} | {r.mean:>9.2f} ± {r.std:>5.2f} "
              f"| {ratio:>11.2f}x |")
    print("(last column: deeproots' mean t/s divided by this row's)")


def cmd_perplexity(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tqdm import tqdm

    from .perplexity import chunk_nlls, summarize

    args.ctx = args.ctx or 512
    text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    model = load_model(args)
    nlls = []
    with tqdm(desc="perplexity", unit=" chunks") as bar:
        for chunk in chunk_nlls(model, text, args.ctx):
            nlls.append(chunk)
            bar.update()
            bar.set_postfix_str(f"ppl {summarize(nlls).perplexity:.4f}")
    result = summarize(nlls)
    print(f"perplexity {result.perplexity:.4f} ± {result.stderr:.4f} over {result.n_scored} tokens "
          f"({result.n_chunks} chunks of {args.ctx})")


def cmd_quantize(args: argparse.Namespace) -> None:
    from .convert import quantize_file

    print(quantize_file(args.input, args.output, args.type, pure=args.pure).describe())


def cmd_convert(args: argparse.Namespace) -> None:
    from .convert import convert_folder

    print(convert_folder(args.folder, args.output, args.type, pure=args.pure).describe())


PURE_HELP = "store the output projection in the target type too (default: Q6_K or Q8_0, as llama.cpp)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deeproots", description="Run open-weight LLMs from GGUF files.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="answer one prompt, streaming the text")
    run.add_argument("prompt", nargs="?", help="the prompt (read from stdin when omitted)")
    run.add_argument("--raw", action="store_true", help="complete the prompt as plain text, no chat template")
    run.add_argument("--system", default=None, help="a system message for the chat template")
    add_model_option(run)
    add_sampling_options(run)
    add_speculation_options(run)
    run.set_defaults(handler=cmd_run, loads_model=True)

    chat = commands.add_parser("chat", help="multi-turn conversation in the terminal")
    add_model_option(chat)
    add_sampling_options(chat)
    add_speculation_options(chat)
    chat.set_defaults(handler=cmd_chat, loads_model=True)

    pull = commands.add_parser("pull", help="fetch a model into the store")
    pull.add_argument("name", choices=sorted(CATALOG),
                      help="; ".join(f"{name}: {entry.description}" for name, entry in sorted(CATALOG.items())))
    pull.set_defaults(handler=cmd_pull)

    commands.add_parser("list", help="stored models").set_defaults(handler=cmd_list)

    rm = commands.add_parser("rm", help="remove a stored model")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_rm)

    bench = commands.add_parser("bench", help="prefill and decode tokens/s, llama-bench style")
    add_model_option(bench)
    bench.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens for ppN (default: 512)")
    bench.add_argument("-n", "--n-gen", type=int, default=128, help="decoded tokens for tgN (default: 128)")
    bench.add_argument("-r", "--repetitions", type=int, default=5, help="runs per test (default: 5)")
    bench.add_argument("--vs", action="append", default=[], choices=["llama.cpp", "transformers"],
                       help="also run another engine on the same file, alternating with ours (repeatable)")
    add_kv_type_option(bench, flag="--vs-kv-type", action="append", default=[],
                       help="also run ours with this KV cache type, alternating (repeatable)")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.set_defaults(handler=cmd_bench, loads_model=True)

    perplexity = commands.add_parser("perplexity", help="perplexity of a model over a text file")
    add_model_option(perplexity)
    perplexity.add_argument("file", help="a UTF-8 text file")
    perplexity.set_defaults(handler=cmd_perplexity, loads_model=True)

    from .convert import FILE_TYPES
    quantize = commands.add_parser("quantize", help="requantize a GGUF file to another type")
    quantize.add_argument("input", help="a .gguf file or a store name")
    quantize.add_argument("output", help="the .gguf file to write")
    quantize.add_argument("--type", required=True, choices=list(FILE_TYPES), help="the type of the weight matrices")
    quantize.add_argument("--pure", action="store_true", help=PURE_HELP)
    quantize.set_defaults(handler=cmd_quantize)

    convert = commands.add_parser("convert", help="convert a Hugging Face folder to a GGUF file")
    convert.add_argument("folder", help="a folder with config.json, *.safetensors and tokenizer.json")
    convert.add_argument("output", help="the .gguf file to write")
    convert.add_argument("--type", default="f16", choices=list(FILE_TYPES),
                         help="the type of the weight matrices (default: f16)")
    convert.add_argument("--pure", action="store_true", help=PURE_HELP)
    convert.set_defaults(handler=cmd_convert)

    from .server.commands import add_server_commands
    add_server_commands(commands)  # serve, bench-serve

    inspect = commands.add_parser("inspect", help="what a model file holds and what it needs to run")
    inspect.add_argument("model", help="a store name or a path to a .gguf file or a Hugging Face folder")
    inspect.add_argument("--ctx", type=int, default=None, help="context size for the memory estimate")
    add_kv_type_option(inspect, default="f16", help="KV cache type for the memory estimate (default f16, as run's)")
    inspect.set_defaults(handler=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "loads_model", False):
        gc.disable()  # until the model is loaded: see memory.freeze_loaded_objects
    try:
        args.handler(args)
    except DeeprootsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        gc.enable()  # also when the load failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
