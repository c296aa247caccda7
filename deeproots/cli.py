"""The `deeproots` command: run | chat | pull | create | list (ls) | show | rm | inspect | bench | perplexity | ...

main() is the one place where failures become messages and exit statuses (docs/cli.md): 0 done, 1 an error (one
line on stderr saying what to do), 2 a usage mistake, 130 Ctrl-C. No traceback reaches a user unless asked for with
--debug or DEEPROOTS_DEBUG=1.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from .cli_options import (CHAT_DEFAULTS, add_context_option, add_model_option, add_sampling_options,
                          add_speculation_options, natural_int, positive_int, resolve_settings, sampling_params,
                          speculation_from)
from .errors import DeeprootsError, InternalError, ModelNotFoundError, RequestError
from .home import store_home
from .preset import Preset, PresetStore
from .repl import ChatSession, NamedModel, note, plain_text_mode, stream_answer
from .store import CATALOG, DEFAULT_MODEL, NAME_PATTERN, ModelStore
from .suggest import did_you_mean

DEBUG_VARIABLE = "DEEPROOTS_DEBUG"


class UsageError(DeeprootsError):
    """A command line that cannot mean anything: exit status 2, as argparse's own usage errors."""


# --- models by name ------------------------------------------------------------------------
def is_model_name(word: str) -> bool:
    """Whether a positional word names a model: a preset, a stored or pullable name, or an existing file or folder."""
    if NAME_PATTERN.fullmatch(word) and (word in CATALOG or ModelStore().get(word) or PresetStore().get(word)):
        return True
    try:
        path = Path(word).expanduser()
        return path.is_file() or (path / "config.json").is_file()
    except (OSError, ValueError):  # a prompt too long for a file name, or holding a NUL
        return False


def known_model_names() -> list[str]:
    return sorted({*CATALOG, *(m.name for m in ModelStore().list()), *PresetStore().names()})


def find_preset(name: str) -> Preset | None:
    return PresetStore().get(name)


def open_model(name: str, preset: Preset | None, args: argparse.Namespace) -> NamedModel:
    """Load a model (a preset's base model, with its context and template) with the command's backend options."""
    from .memory import freeze_loaded_objects
    from .model import load
    from .terminal import load_progress

    base = preset.base if preset else name
    context = args.ctx or (preset.parameters.get("ctx") if preset else None)
    model_path = ModelStore().resolve(base, pull=True)  # a pull shows its own progress bar, before the load's line
    started = time.perf_counter()
    with load_progress(name):
        model = load(model_path, context=context, reference=args.reference, threads=args.threads, kv_type=args.kv_type,
                     device=args.device, tp=args.tp, tp_reduction=args.tp_reduction, secret_file=args.secret_file,
                     pp=args.pp, pp_split=args.pp_split, **speculation_from(args))
    freeze_loaded_objects()
    if getattr(args, "verbose", False):
        from .kernels import kernel_path

        print(f"load: {time.perf_counter() - started:.2f} s; kernels: {kernel_path()}", file=sys.stderr)
    if preset and preset.template:
        from .tokenizer.chat import TEMPLATE_KEY, ChatTemplate

        model.template = ChatTemplate.from_gguf_metadata({**model.file.metadata, TEMPLATE_KEY: preset.template},
                                                         model.tokenizer)
    path = Path(base).expanduser()
    saved_as = base if NAME_PATTERN.fullmatch(base) and not path.exists() else str(path.resolve())
    return NamedModel(model, name, saved_as, preset)


def load_model(args: argparse.Namespace):
    """The model of a command that only computes with it (bench, perplexity)."""
    name = args.model or DEFAULT_MODEL
    return open_model(name, find_preset(name), args).model


# --- run and chat --------------------------------------------------------------------------
def run_model_and_prompt(args: argparse.Namespace) -> tuple[str, str | None]:
    """(model name, prompt) of `run [MODEL] [PROMPT...]`, -m, -p and -f; prompt None: stdin is a terminal (REPL)."""
    words = list(args.words)
    if args.model is None and words and is_model_name(words[0]):
        args.model = words.pop(0)
    elif args.model is None and len(words) == 1 and not any(c.isspace() for c in words[0]):
        hint = did_you_mean(words[0], known_model_names(), cutoff=0.75)
        if hint:
            raise ModelNotFoundError(f"unknown model {words[0]!r}{hint} (to send it as the prompt, use -p)")
    given = [source for source in (words and " ".join(words), args.prompt, args.file) if source]
    if len(given) > 1:
        raise UsageError("give the prompt once: as words, with -p or with -f")
    if args.file:
        prompt = utf8_text(Path(args.file).read_bytes(), args.file)
    elif given:
        prompt = given[0]
    else:
        prompt = None if sys.stdin.isatty() else utf8_text(sys.stdin.buffer.read(), "stdin")
    return args.model or DEFAULT_MODEL, prompt


def utf8_text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"{source} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") \
            from None


def cmd_run(args: argparse.Namespace) -> None:
    name, prompt = run_model_and_prompt(args)
    if prompt is None:
        start_chat(args, name)
        return
    preset = find_preset(name)
    settings = resolve_settings(args, preset)
    sampling_params(settings)  # invalid values fail before the model loads
    named = open_model(name, preset, args)
    model = named.model
    if plain_text_mode(named, args.raw):
        ids = model.tokenize(prompt)
    else:
        system = args.system if args.system is not None else (preset.system if preset else None)
        messages = [{"role": "system", "content": system}] if system else []
        ids = model.apply_chat_template(messages + [{"role": "user", "content": prompt}], tokenize=True)
    answer = stream_answer(model, ids, settings, verbose=args.verbose)
    if answer.finish == "interrupted":
        raise KeyboardInterrupt
    if answer.finish == "context":
        note(f"the context of {model.context} tokens filled up after {answer.n_tokens} tokens of answer; "
             "raise it with --ctx for a longer one")


def cmd_chat(args: argparse.Namespace) -> None:
    start_chat(args, args.model or args.model_word or DEFAULT_MODEL)


def start_chat(args: argparse.Namespace, name: str) -> None:
    from .terminal import enable_line_editing

    preset = find_preset(name)
    settings = resolve_settings(args, preset)
    sampling_params(settings)
    named = open_model(name, preset, args)
    if sys.stdin.isatty():
        enable_line_editing(store_home() / "history")
    system = args.system if args.system is not None else (preset.system if preset else None)
    ChatSession(named, settings, system, args.raw, load=lambda other: open_model(other, find_preset(other), args),
                verbose=args.verbose).run()


# --- the store: pull, create, list, show, rm -----------------------------------------------
def cmd_pull(args: argparse.Namespace) -> None:
    store = ModelStore()
    source = Path(args.name).expanduser()
    if args.name not in CATALOG and (source.is_file() or source.is_dir()):
        if not args.as_name:
            raise UsageError(f"importing {source} needs a name for it: --name NAME")
        stored = store.import_model(source, args.as_name)
    elif args.as_name:
        raise UsageError(f"--name is for importing a file or folder, and {args.name!r} is neither")
    else:
        stored = store.pull(args.name)
    print(f"{stored.name}: {stored.path} (sha256 {stored.sha256})")


def cmd_create(args: argparse.Namespace) -> None:
    from .preset import parse
    from .tokenizer.chat import ChatTemplate

    store = ModelStore()
    path = Path(args.file)
    preset = parse(utf8_text(path.read_bytes(), str(path)), str(path))
    if args.name in CATALOG or store.get(args.name):
        raise RequestError(f"a model is stored as {args.name!r}; choose another name for the preset")
    if find_preset(preset.base):
        raise RequestError(f"FROM {preset.base} names a preset; FROM takes a model (a store name or a file)")
    beside = (path.parent / Path(preset.base).expanduser())  # a relative FROM path is read from the file's folder
    if not (NAME_PATTERN.fullmatch(preset.base) and (preset.base in CATALOG or store.get(preset.base))):
        preset.base = str(beside.resolve()) if beside.exists() else preset.base
        store.resolve(preset.base, pull=False)  # an unknown name or missing file fails here, saying why
    if preset.template is not None:
        ChatTemplate(preset.template)  # a template that does not parse fails now, not at the first run
    sampling_params({**CHAT_DEFAULTS, **preset.parameters})
    saved = PresetStore().save(args.name, preset)
    print(f"Created {args.name} from {preset.base} ({saved}); `deeproots run {args.name}` uses it.")


def cmd_list(args: argparse.Namespace) -> None:
    from .inspect import human_bytes, summarize

    models, presets = ModelStore().list(), PresetStore()
    if not models and not presets.names():
        print(f"No models stored yet; `deeproots pull {DEFAULT_MODEL}` fetches the default one.")
        return
    print(f"{'NAME':<20} {'SIZE':>10} {'QUANT':<8} {'ARCH':<10} PATH")
    for stored in models:
        summary = summarize(stored.path)
        print(f"{stored.name:<20} {human_bytes(stored.size):>10} {summary.quantization:<8} "
              f"{summary.architecture:<10} {stored.path}")
    for name in presets.names():
        print(f"{name:<20} {'preset':>10} {'':<8} {'':<10} FROM {presets.get(name).base}")


def cmd_rm(args: argparse.Namespace) -> None:
    if find_preset(args.name):
        PresetStore().remove(args.name)
    else:
        ModelStore().remove(args.name)
    print(f"Removed {args.name}.")


def capabilities(template: str | None) -> str:
    """What a model can be asked for, as `show` lists it; tools and thinking read from its chat template."""
    found = ["completion"] + (["chat"] if template else [])
    features = [label for label, mark in (("tools", "tools"), ("thinking", "<think>")) if template and mark in template]
    return ", ".join(found) + (f" (its template handles {', '.join(features)})" if features else "")


def cmd_show(args: argparse.Namespace) -> None:
    from .inspect import describe, print_rows, summarize

    preset = find_preset(args.model)
    summary = summarize(ModelStore().resolve(preset.base if preset else args.model, pull=False))
    template = preset.template if preset and preset.template else summary.chat_template
    system = preset.system if preset else None
    settings = {**CHAT_DEFAULTS, **(preset.parameters if preset else {})}
    parameters = [(name, f"{value}" + ("" if preset and name in preset.parameters else " (default)"))
                  for name, value in settings.items()]
    if args.template:
        print(template or "(the file has no chat template; chat uses the built-in one for its family)")
    elif args.license:
        print(summary.license or "(the file does not state a license)")
    elif args.parameters:
        print_rows(parameters)
    elif args.system:
        print(system or "(no system message)")
    else:
        rows = [("preset", f"{args.model} (FROM {preset.base})")] if preset else []
        rows += describe(summary, args.ctx or (preset.parameters.get("ctx") if preset else None), args.kv_type)
        rows += [("license", summary.license or "(not stated in the file)"),
                 ("capabilities", capabilities(template)), ("system", system or "(none)"), *parameters]
        print_rows(rows)
        print(f"\ntemplate:\n{template}" if template else "\ntemplate: (none in the file; chat uses the built-in one "
                                                          "for its family)")


def cmd_inspect(args: argparse.Namespace) -> None:
    from .inspect import describe, print_rows, summarize

    print_rows(describe(summarize(ModelStore().resolve(args.model, pull=False)), args.ctx, args.kv_type, args.device))


# --- tools ---------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> None:
    import json
    import statistics

    from tqdm import tqdm

    from .bench import DeeprootsEngine, LlamaCppEngine, TransformersEngine, benchmark_tokens, row_limit, run_benchmark
    from .inspect import human_bytes, human_count, summarize
    from .kernels import _cpu, amx_enabled, get_num_threads, kernel_path
    from .kernels.bandwidth import READ_BYTES, read_bandwidth
    from .kernels.int8_rate import int8_rate
    from .limits import int8_peak, traffic

    if not args.n_prompt and not args.n_gen:
        raise UsageError("-p and -n are both 0: nothing to measure")
    args.ctx = args.ctx or max(args.n_prompt, args.n_gen)
    model = load_model(args)
    threads = args.threads or get_num_threads()
    engines = [DeeprootsEngine(model), *(DeeprootsEngine(model, kv_type) for kv_type in args.vs_kv_type)]
    if args.vs_no_amx:
        if not amx_enabled():
            raise UsageError(f"--vs-no-amx: AMX is not in use here ({kernel_path()})")
        engines.append(DeeprootsEngine(model, amx=False))
    for other in args.vs:
        if other == "llama.cpp":
            engines.append(LlamaCppEngine(model.path, args.ctx, threads))
        else:
            engines.append(TransformersEngine(model.path))
    tokens = benchmark_tokens(model.config.vocab_size, max(args.n_prompt, args.n_gen))
    # The bounds are probed before, among and after the engines' runs: a shared machine's bandwidth moves by up to 2x
    # within a minute, and its int8 rate halves while another process takes a core.
    bandwidth, int8 = read_bandwidth(repetitions=3), int8_rate(repetitions=3) if args.n_prompt else []

    def probe(test: str) -> None:  # one more sample of the bound of the test just run
        if test.startswith("tg"):
            bandwidth.extend(read_bandwidth(repetitions=1))
        else:
            int8.extend(int8_rate(repetitions=1))
    with tqdm(total=len(engines) * args.repetitions * (bool(args.n_prompt) + bool(args.n_gen)),
              desc="bench", disable=args.json, leave=False) as bar:
        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()
        results = run_benchmark(engines, tokens, args.n_prompt, args.n_gen, args.repetitions, progress,
                                after_repetition=probe)
    bandwidth += read_bandwidth(repetitions=3)
    int8 += int8_rate(repetitions=3) if args.n_prompt else []
    bandwidth_gbs = statistics.median(bandwidth)
    per_token = traffic(model.path, model.config)
    # Each engine's prefill bound: the measured rate of the VNNI/AVX2 kernels' instruction (llama.cpp, built without
    # AMX here, see the Makefile, runs the same class of instruction), or the nominal AMX-INT8 peak for our engine
    # where it ran on AMX (no probe of it).
    nominal = int8_peak(_cpu.ISA, threads)
    measured = statistics.median(int8) if int8 else None
    vector_bound = measured or (nominal.ops_per_second if nominal else None)
    amx_peak = int8_peak("amx-int8", threads)
    on_amx = {e.name for e in engines if getattr(e, "amx", False) and amx_enabled()} if amx_peak else set()
    peaks = {e.name: amx_peak.ops_per_second if e.name in on_amx else vector_bound for e in engines}
    kv_types = {e.name: e.kv_type for e in engines}
    limits = [row_limit(r, kv_types[r.engine], per_token, bandwidth_gbs, peaks[r.engine]) for r in results]
    summary = summarize(model.path)
    if args.json:
        rows = []
        for r, limit in zip(results, limits):
            row = {"engine": r.engine, "test": r.test, "tokens_per_second": r.tokens_per_second, "mean": r.mean,
                   "std": r.std}
            if r.test.startswith("tg"):
                row.update(bytes_per_token=limit.per_token, gb_per_second=limit.per_second / 1e9,
                           bandwidth_fraction=limit.fraction)
            else:
                row.update(ops_per_token=limit.per_token, ops_per_second=limit.per_second, peak_fraction=limit.fraction)
            rows.append(row)
        print(json.dumps({"model": str(model.path), "size": summary.file_size, "params": summary.n_params,
                          "threads": threads, "kernels": kernel_path(), "read_bandwidth_gbs": bandwidth_gbs,
                          "read_bandwidth_samples": bandwidth, "read_bytes": READ_BYTES,
                          "decode_weight_bytes": per_token.decode_weight_bytes,
                          "int8_peak_ops_per_second": peaks[engines[0].name], "int8_rate_samples": int8,
                          "int8_nominal_peak": nominal.describe() if nominal else None, "results": rows}, indent=2))
        return
    model_name = f"{summary.architecture} {summary.quantization}"
    baseline = {r.test: r.mean for r in results if r.engine == engines[0].name}
    print(f"| {'model':<16} | {'size':>9} | {'params':>7} | {'engine':<22} | {'threads':>7} | {'test':>6} "
          f"| {'t/s':>17} | {'deeproots is':>12} | {'achieved':>12} | {'of bound':>9} |")
    print(f"| {'-' * 16} | {'-' * 8}: | {'-' * 6}: | {'-' * 22} | {'-' * 6}: | {'-' * 5}: | {'-' * 16}: "
          f"| {'-' * 11}: | {'-' * 11}: | {'-' * 8}: |")
    for r, limit in zip(results, limits):
        ratio = baseline[r.test] / r.mean
        achieved = f"{limit.per_second / 1e9:.1f} GB/s" if r.test.startswith("tg") else \
            f"{limit.per_second / 1e9:.0f} Gop/s"
        of_bound = f"{limit.fraction:.0%}" if limit.fraction is not None else "?"
        print(f"| {model_name:<16} | {human_bytes(summary.file_size):>9} | {human_count(summary.n_params):>7} "
              f"| {r.engine:<22} | {threads:>7} | {r.test:>6} | {r.mean:>9.2f} ± {r.std:>5.2f} "
              f"| {ratio:>11.2f}x | {achieved:>12} | {of_bound:>9} |")
    print(f"(deeproots is: deeproots' mean t/s divided by this row's; kernels: {kernel_path()})")
    print(f"(tg achieved: {human_bytes(per_token.decode_weight_bytes)} of weights per token, the KV cache so far "
          f"besides; of bound: of the read bandwidth, {bandwidth_gbs:.1f} GB/s = median of {len(bandwidth)} reads "
          f"of {READ_BYTES >> 20} MiB on {get_num_threads()} threads in this run)")
    if args.n_prompt:
        if measured:
            bound = (f"the int8 rate measured in this run, {measured / 1e12:.2f} Tops/s = median of {len(int8)} probes "
                     f"of {_cpu.ISA}'s dot product on {get_num_threads()} threads" +
                     (f" (the nominal peak: {nominal.describe()})" if nominal else ""))
        else:
            bound = f"the nominal peak, {nominal.describe()}" if nominal else f"a peak unknown for {_cpu.ISA}"
        if on_amx:
            bound += f"; rows on AMX: of its nominal peak, {amx_peak.describe()}"
        print(f"(pp achieved: int8 ops, 2 x K x N per matrix per token; of bound: of {bound})")


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
    parser.add_argument("--version", action="version", version=f"deeproots {package_version()}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an unexpected error (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="answer one prompt, streaming the text (no prompt at a terminal: chat)")
    run.add_argument("words", nargs="*", metavar="[MODEL] [PROMPT]",
                     help="a model (a store name, preset or path) and the prompt; the prompt is read from stdin "
                          "when omitted, or a chat starts when stdin is a terminal")
    run.add_argument("-p", "--prompt", default=None, help="the prompt (as llama.cpp's -p)")
    run.add_argument("-f", "--file", default=None, help="read the prompt from this file (as llama.cpp's -f)")
    add_model_option(run)
    add_sampling_options(run)
    add_speculation_options(run)
    run.set_defaults(handler=cmd_run, loads_model=True)

    chat = commands.add_parser("chat", help="multi-turn conversation in the terminal")
    chat.add_argument("model_word", nargs="?", metavar="MODEL", help="the model, as -m")
    add_model_option(chat)
    add_sampling_options(chat)
    add_speculation_options(chat)
    chat.set_defaults(handler=cmd_chat, loads_model=True)

    pull = commands.add_parser("pull", help="fetch a model into the store, or import a file or folder into it")
    pull.add_argument("name", help="; ".join(f"{name}: {entry.description}" for name, entry in sorted(CATALOG.items()))
                      + "; or a path to a .gguf file or Hugging Face folder to import (with --name)")
    pull.add_argument("--name", dest="as_name", default=None, help="the store name of an imported file or folder")
    pull.set_defaults(handler=cmd_pull)

    create = commands.add_parser("create", help="store a preset: a base model with system prompt and parameters")
    create.add_argument("name", help="the preset's name, for run/chat/show/rm")
    create.add_argument("-f", "--file", default="Presetfile", help="the Presetfile (default: ./Presetfile)")
    create.set_defaults(handler=cmd_create)

    commands.add_parser("list", aliases=["ls"], help="stored models and presets").set_defaults(handler=cmd_list)

    show = commands.add_parser("show", help="a model's template, parameters, license, capabilities and metadata")
    show.add_argument("model", help="a store name, a preset or a path to a .gguf file or a Hugging Face folder")
    for flag in ("template", "parameters", "license", "system"):
        show.add_argument(f"--{flag}", action="store_true", help=f"print only the {flag}")
    add_inspect_options(show)
    show.set_defaults(handler=cmd_show)

    rm = commands.add_parser("rm", help="remove a stored model or preset")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_rm)

    bench = commands.add_parser("bench", help="prefill and decode tokens/s, llama-bench style")
    add_model_option(bench)
    bench.add_argument("-p", "--n-prompt", type=natural_int, default=512, help="prompt tokens for ppN (default: 512)")
    bench.add_argument("-n", "--n-gen", type=natural_int, default=128, help="decoded tokens for tgN (default: 128)")
    bench.add_argument("-r", "--repetitions", type=positive_int, default=5, help="runs per test (default: 5)")
    bench.add_argument("--vs", action="append", default=[], choices=["llama.cpp", "transformers"],
                       help="also run another engine on the same file, alternating with ours (repeatable)")
    bench.add_argument("--vs-kv-type", action="append", default=[], choices=list(kv_types()),
                       help="also run ours with this KV cache type, alternating (repeatable)")
    bench.add_argument("--vs-no-amx", action="store_true",
                       help="also run deeproots with AMX off (the AVX-512 VNNI path), alternating")
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
    add_inspect_options(inspect)
    inspect.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                         help="estimate host memory (cpu) or the CUDA backend's device memory (cuda)")
    inspect.set_defaults(handler=cmd_inspect)
    return parser


def kv_types() -> tuple[str, ...]:
    from .cache.kv import KV_TYPES

    return tuple(KV_TYPES)


def add_inspect_options(parser: argparse.ArgumentParser) -> None:
    add_context_option(parser)
    parser.add_argument("--kv-type", choices=list(kv_types()), default="f16",
                        help="KV cache type for the memory estimate (default f16, as run's)")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deeproots")
    except PackageNotFoundError:
        return "(not installed)"


# --- errors: one place, one line -----------------------------------------------------------
def describe_os_error(error: OSError) -> str:
    """One line for a failed file operation; one inside the store says how to point the store elsewhere."""
    reason = error.strerror or str(error)
    if not error.filename:
        return reason
    filename, home = str(error.filename), str(store_home())
    if filename.startswith(home) or home.startswith(filename.rstrip(os.sep) + os.sep):
        return (f"cannot use the store folder {home}: {reason} ({filename}); "
                "set DEEPROOTS_HOME to a folder you can write to")
    return f"{reason}: {filename}"


def unknown_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The usage message for a first word that is no command, with the closest command; None when it is one."""
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    names = next(action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    if word is None or word in names:
        return None
    return f"deeproots: unknown command {word!r}{did_you_mean(word, names)}; `deeproots --help` lists the commands"


def follow_rank_zero(args: argparse.Namespace) -> None:
    """A torchrun rank other than 0 of `serve|run|bench|perplexity --tp N`: load this rank's share of the command's
    model and run the steps rank 0 sends, until it stops."""
    from .parallel.join import read_secret
    from .parallel.launch import follow_main

    if args.secret_file is None:
        raise RequestError("under torchrun every rank needs --secret-file (the same secret on every host)")

    if args.command == "serve":
        name = (args.models or [DEFAULT_MODEL])[0]
    elif args.command == "run":
        name = run_model_and_prompt(args)[0]
    else:
        name = getattr(args, "model", None) or getattr(args, "model_word", None) or DEFAULT_MODEL
    preset = find_preset(name)
    path = ModelStore().resolve(preset.base if preset else name, pull=True)
    follow_main(path, read_secret(args.secret_file), context=args.ctx, reference=args.reference,
                threads=args.threads, kv_type=args.kv_type, tp=args.tp, tp_reduction=args.tp_reduction, pp=args.pp,
                pp_split=args.pp_split)


def run_handler(args: argparse.Namespace, debug: bool) -> int:
    """Run the command; every failure becomes one line on stderr and an exit status."""
    handler = args.handler
    if max(getattr(args, "tp", 1), getattr(args, "pp", 1)) > 1:
        from .parallel.launch import follower_under_torchrun

        handler = follow_rank_zero if follower_under_torchrun() else handler
    try:
        handler(args)
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 0
    except UsageError as error:
        print(f"deeproots {args.command}: {error}", file=sys.stderr)
        return 2
    except InternalError as error:
        return report_bug(error, debug)
    except DeeprootsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except MemoryError as error:
        print(f"error: out of memory ({error or 'an allocation failed'}); a smaller --ctx, --kv-type q8_0 or a smaller "
              "model needs less", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the last line of defence: no traceback unless asked for
        return report_bug(error, debug)


def report_bug(error: Exception, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(error)
    hint = "" if debug else f"; --debug or {DEBUG_VARIABLE}=1 shows the traceback"
    print(f"error: unexpected {type(error).__name__}: {error} (a bug in deeproots: please report it with the command "
          f"you ran{hint})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    message = unknown_command(parser, argv)
    if message:
        print(message, file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "run" or any(arg.startswith("-") for arg in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # `run MODEL -n 5 PROMPT`: argparse ends the positional words at the first option
        args.words += extra
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    if getattr(args, "loads_model", False):
        gc.disable()  # until the model is loaded: see memory.freeze_loaded_objects
    try:
        return run_handler(args, debug)
    finally:
        gc.enable()  # also when the load failed


if __name__ == "__main__":
    sys.exit(main())
