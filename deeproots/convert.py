"""Writing GGUF files: `deeproots quantize` (GGUF -> GGUF) and `deeproots convert` (Hugging Face folder -> GGUF).

Both commands open a source with the GGUFFile interface (`path`, `metadata`, `tensors`, `tensor_data`; an HF
folder is presented that way by formats/hf_folder.py) and hand it to one function, `write_gguf`.

Tensor types follow llama.cpp's llama-quantize:
- Vectors (norms, biases: one dimension above 1) are stored as F32 whatever the target, and so are the routers of
  a mixture of experts (`blk.N.ffn_gate_inp.weight`: a few rows that choose each token's experts), as llama.cpp's
  converter and llama-quantize keep them, and gpt-oss's per-expert biases (`blk.N.ffn_*_exps.bias`: a vector per
  expert, added after the product, not multiplied by the activations).
- Every other tensor takes the target type: copied byte for byte when it already has it, otherwise dequantized to
  float32 and quantized, one tensor at a time.
- Fallback: a row length that is not a multiple of the target's block size takes llama.cpp's substitute, a
  32-value format of at least the target's precision: Q4_K -> Q5_0, Q6_K -> Q8_0 (the k-quants need rows of 256;
  SmolLM2's are 576 wide). A row that fits neither (no substitute, or not a multiple of 32) is stored as F16.
  llama.cpp refuses such a row for the 32-value targets; F16 loses nothing and keeps the file loadable.
- `mxfp4_moe` (llama-quantize's MXFP4_MOE, gpt-oss's own format for its experts): the experts' 3-d matrices
  (`blk.N.ffn_*_exps.weight`) are stored as MXFP4, every other tensor as for `q8_0`.
- The output projection (`output.weight`, or `token_embd.weight` when the model ties it to the embeddings) of a
  quantized target is stored as Q6_K, or as Q8_0 when its rows do not fit Q6_K's 256-value blocks or the target
  is Q8_0: llama.cpp's rule (llama_tensor_get_type), because the logits are where a coarse grid costs most
  (docs/benchmarks.md: q4_0 of the default model: +36% perplexity uniform, +25% with the rule). `--pure` (as
  llama-quantize's) writes it in the target type like every other matrix. The rest of llama.cpp's per-preset
  promotions (attn_v, ffn_down in q4_k_m) are not applied.

Metadata is copied in order, each key with the value type the source stored (`metadata_types`). A source without
stored types (an HF folder) gets llama.cpp's: the standard type of the well-known keys (KNOWN_KEY_TYPES: token
types INT32, scores FLOAT32, tokens and merges string arrays, ids UINT32), UINT32 for other non-negative ints,
FLOAT32 for floats, BOOL for bools. `general.file_type` becomes llama.cpp's LLAMA_FTYPE for the target and
`general.quantization_version` 2.

The module's top level imports only the standard library, so that `deeproots --help` stays fast.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DeeprootsError, ModelNotFoundError, RequestError, UnsupportedModelError

if TYPE_CHECKING:
    from .quant.types import GGMLType

# --type -> llama.cpp's LLAMA_FTYPE for a file mostly of that type; a Q4_K file is labelled MOSTLY_Q4_K_M.
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3, "q4_k": 15, "q6_k": 18,
              "mxfp4_moe": 38}
# A target whose experts take a type of their own -> (the experts' type, the target the other tensors follow).
EXPERT_TARGETS = {"mxfp4_moe": ("MXFP4", "q8_0")}
EXPERT_TENSOR_SUFFIX = "_exps.weight"  # blk.N.ffn_{gate,up,down}_exps.weight: every expert's matrix, stacked
# llama.cpp's substitute for a target whose blocks do not fit a row (llama_tensor_get_type).
FALLBACK_TYPES = {"q4_k": "Q5_0", "q6_k": "Q8_0"}
QUANTIZED_TARGETS = frozenset({"q8_0", "q4_0", "q4_1", "q4_k", "q6_k"})
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts of the current ggml
ROUTER_TENSOR = "ffn_gate_inp.weight"  # blk.N.ffn_gate_inp.weight: a mixture of experts' router
PARTIAL_SUFFIX = ".partial"  # the output is written here first, so a failed run leaves no truncated file


@dataclass(frozen=True)
class WriteSummary:
    out_path: str
    input_bytes: int  # the source file, or the files directly inside the source folder
    output_bytes: int
    tensor_types: dict[str, int]  # GGML type name -> tensors written in it
    fallbacks: dict[str, int]  # substitute type name -> tensors whose rows did not fit the target's blocks
    seconds: float
    output_tensor: tuple[str, str] | None = None  # (name, type) of an output projection stored wider than the rest

    def describe(self) -> str:
        types = ", ".join(f"{name} x{count}" for name, count in self.tensor_types.items())
        size = (f"size: {self.input_bytes / 1e6:.1f} MB -> {self.output_bytes / 1e6:.1f} MB "
                f"({self.output_bytes / self.input_bytes:.2f}x)")
        lines = [f"wrote {self.out_path} in {self.seconds:.1f} s: {types}", size]
        if self.fallbacks:
            lines.append("fell back where rows do not fit the target's blocks: "
                         + ", ".join(f"{name} x{count}" for name, count in self.fallbacks.items()))
        if self.output_tensor:
            name, type_name = self.output_tensor
            lines.append(f"output projection {name} stored as {type_name}, as llama.cpp does (--pure: as the rest)")
        return "\n".join(lines)


def tensor_type(target: str, shape: tuple[int, ...], *, output: bool = False, router: bool = False,
                bias: bool = False, expert: bool = False) -> GGMLType:
    """The type a tensor of `shape` (GGUF order, row length first) is written in for `--type target`; `output`:
    it is the model's output projection, `router`: an expert router, `bias`: biases, `expert`: the experts' 3-d
    matrices (see the module's docstring)."""
    from .quant.types import BLOCK_GEOMETRY, GGMLType

    if router or bias or math.prod(shape[1:]) == 1:  # a router, biases, or a vector (ggml counts trailing 1s out)
        return GGMLType.F32
    if target in EXPERT_TARGETS:
        expert_type, target = GGMLType[EXPERT_TARGETS[target][0]], EXPERT_TARGETS[target][1]
        if expert and shape[0] % BLOCK_GEOMETRY[expert_type].block_size == 0:
            return expert_type
    if output and target in QUANTIZED_TARGETS:
        candidates = [GGMLType.Q8_0] if target == "q8_0" else [GGMLType.Q6_K, GGMLType.Q8_0]
    else:
        candidates = [GGMLType[target.upper()], GGMLType[FALLBACK_TYPES.get(target, "F16")]]
    return next((t for t in candidates if shape[0] % BLOCK_GEOMETRY[t].block_size == 0), GGMLType.F16)


def _value_types(key: str, value: Any) -> tuple[Any, None]:
    """llama.cpp's type for a key the source stored no type for: counts and ids are UINT32; the writer infers the
    rest (standard keys, floats, bools, strings, arrays) as llama.cpp writes them."""
    from .formats.gguf import KNOWN_KEY_TYPES, GGUFValueType

    if key not in KNOWN_KEY_TYPES and type(value) is int and 0 <= value < 1 << 32:
        return GGUFValueType.UINT32, None
    return None, None


def _check_output(source_path: str, out_path: str) -> None:
    """Refuse, before any slow work, an output that would overwrite the input or cannot be written."""
    if os.path.isdir(out_path):
        raise RequestError(f"output {out_path!r} is a folder; give a file name such as model-q8_0.gguf")
    if os.path.exists(out_path) and os.path.samefile(out_path, source_path):
        raise RequestError(f"output {out_path!r} is the input file; give another output path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
        raise RequestError(f"the folder of output {out_path!r} does not exist")


def write_gguf(source: Any, out_path: str | os.PathLike, target: str, *, progress: bool = True,
               pure: bool = False) -> WriteSummary:
    """Write `source` (GGUFFile interface) to `out_path` with its matrices in `target` (a FILE_TYPES key); `pure`:
    the output projection too."""
    from tqdm import tqdm

    from .formats.gguf import DEFAULT_ALIGNMENT
    from .formats.gguf_writer import GGUFWriter
    from .store import disk_size
    from .quant import dequantize, quantize

    if target not in FILE_TYPES:
        raise UnsupportedModelError(f"unknown target type {target!r}; supported: {', '.join(FILE_TYPES)}")
    out_path = os.fspath(out_path)
    _check_output(source.path, out_path)
    started = time.perf_counter()
    writer = GGUFWriter(alignment=source.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    stored_types = getattr(source, "metadata_types", {})  # an HF folder has none
    metadata = {**source.metadata, "general.file_type": FILE_TYPES[target],
                "general.quantization_version": QUANTIZATION_VERSION}
    for key, value in metadata.items():
        if key != "general.alignment":  # the writer records it from its constructor
            writer.add(key, value, *stored_types.get(key, _value_types(key, value)))
    tensor_types: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    output_name = None if pure else "output.weight" if "output.weight" in source.tensors else "token_embd.weight"
    output_tensor = None
    intended = EXPERT_TARGETS.get(target, (target,))  # the type names a tensor takes unless it falls back
    intended = tuple(name.upper() for name in intended)
    for name, info in tqdm(source.tensors.items(), desc="tensors", unit=" tensors", disable=not progress):
        raw = source.tensor_data(name)
        out_type = tensor_type(target, info.shape, output=name == output_name, router=name.endswith(ROUTER_TENSOR),
                               bias=name.endswith(".bias"), expert=name.endswith(EXPERT_TENSOR_SUFFIX))
        if out_type != info.ggml_type:  # through float32, this one tensor only
            raw = quantize(dequantize(raw, info.ggml_type, info.shape), out_type).reshape(-1)
        writer.add_tensor(name, raw, out_type, info.shape)
        tensor_types[out_type.name] += 1
        if name == output_name and out_type.name not in intended:
            output_tensor = (name, out_type.name)
        elif out_type.name not in (*intended, "F32"):  # F32 is the rule for vectors, not a fallback
            fallbacks[out_type.name] += 1
    partial = out_path + PARTIAL_SUFFIX
    try:
        writer.write(partial)
        os.replace(partial, out_path)
    except OSError as error:
        raise DeeprootsError(f"cannot write {out_path!r}: {error.strerror}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return WriteSummary(out_path, disk_size(Path(source.path)), os.path.getsize(out_path), dict(tensor_types),
                        dict(fallbacks), time.perf_counter() - started, output_tensor)


def quantize_file(model: str | os.PathLike, out_path: str | os.PathLike, target: str, *,
                  progress: bool = True, pure: bool = False) -> WriteSummary:
    """`deeproots quantize`: a GGUF file (a path or a store name) requantized to `target`."""
    from .formats.gguf import GGUFFile
    from .store import ModelStore

    with GGUFFile.open(ModelStore().resolve(model)) as source:
        return write_gguf(source, out_path, target, progress=progress, pure=pure)


def convert_folder(folder: str | os.PathLike, out_path: str | os.PathLike, target: str, *,
                   progress: bool = True, pure: bool = False) -> WriteSummary:
    """`deeproots convert`: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) to GGUF."""
    from .model_file import open_hf_folder

    if not os.path.isdir(folder):
        raise ModelNotFoundError(f"{os.fspath(folder)!r} is not a folder; convert reads a Hugging Face folder "
                                 "(config.json, *.safetensors, tokenizer.json); requantize a .gguf file with "
                                 "`deeproots quantize`")
    with open_hf_folder(folder) as source:
        return write_gguf(source, out_path, target, progress=progress, pure=pure)
