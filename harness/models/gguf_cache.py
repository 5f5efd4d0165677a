"""A GGUF file converted once: its tokenizer and de-quantised model saved as a transformers folder, loaded from there.

transformers converts a GGUF file on every load, and slowly: the embedded 98 MB file took ~23 s to load on a
2-core machine, most of it parsing the file's fields three times (tokenizer, config, weights) and rebuilding
gguf-py's tensor-name map once per tensor. The converted folder loads in about a second. Nothing here replaces
transformers' conversion (the first load is transformers' own); the folder only remembers its result.

The folder is keyed by the GGUF file's content (sha256) and the versions of the code that converted it
(transformers, gguf), and for weights by the dtype they were loaded in; a model's identity stays the GGUF file's
(harness.models.identity), so samples are keyed the same whichever way it loaded. Where it lives:
$LLM_REPLICATIONS_GGUF_CACHE, else ~/.cache/llm-replications/gguf (or under $XDG_CACHE_HOME). A read-only cache
directory only means converting every time.
"""
from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from harness.models.identity import user_cache_path, weights_record

GGUF_CACHE_ENV = "LLM_REPLICATIONS_GGUF_CACHE"


def cache_root() -> Path:
    return user_cache_path(GGUF_CACHE_ENV, "gguf")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def converted_dir(gguf_sha256: str, part: str) -> Path:
    """Where the conversion of the GGUF file with this digest is kept (`part`: tokenizer, or model-<dtype>)."""
    converter = f"transformers{_version('transformers')}-gguf{_version('gguf')}"
    return cache_root() / f"{gguf_sha256[:32]}-{converter}" / part


def dequantized(model: Any) -> Any:
    """Clear the quantizer marker of a model loaded from GGUF (transformers de-quantizes GGUF weights to
    plain tensors on load but keeps the marker, which makes Trainer refuse full fine-tuning and
    save_pretrained write a GGUF quantization_config that the saved fp32 folder does not match)."""
    if getattr(model, "hf_quantizer", None) is not None and model.hf_quantizer.quantization_config.quant_method == "gguf":
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def load_tokenizer(where: str, gguf_file: str | None, gguf_sha256: str | None = None, **kwargs: Any) -> Any:
    """AutoTokenizer.from_pretrained(where, gguf_file=...), from the converted folder once there is one."""
    from transformers import AutoTokenizer

    if not gguf_file:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    folder = converted_dir(gguf_sha256 or _sha256(where, gguf_file), "tokenizer")
    return _cached(folder, lambda: AutoTokenizer.from_pretrained(where, gguf_file=gguf_file, **kwargs),
                   lambda: AutoTokenizer.from_pretrained(folder))


def load_causal_lm(where: str, gguf_file: str, gguf_sha256: str, dtype: Any, **kwargs: Any) -> Any:
    """AutoModelForCausalLM.from_pretrained(where, gguf_file=..., dtype=...), from the converted folder once there is
    one. Only for a model loaded whole on one device (a device_map spreads it as it loads; convert each time)."""
    from transformers import AutoModelForCausalLM

    folder = converted_dir(gguf_sha256, f"model-{str(dtype).removeprefix('torch.')}")
    return _cached(folder, lambda: dequantized(AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf_file, dtype=dtype, **kwargs)),
                   lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype))


def _cached(folder: Path, convert: Callable[[], Any], load: Callable[[], Any]) -> Any:
    if (folder / "complete").is_file():
        return load()
    converted = convert()
    scratch = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        converted.save_pretrained(scratch)
        (scratch / "complete").write_text("")  # written last: a folder without it is a killed save
        if not (folder / "complete").is_file():  # else another process finished first, and its folder stays
            if folder.exists():  # a killed save
                shutil.rmtree(folder)
            scratch.rename(folder)
    except OSError:  # read-only or full: converting each time still loads the model
        pass
    if scratch is not None and scratch.exists():
        shutil.rmtree(scratch, ignore_errors=True)
    return converted


def _sha256(where: str, gguf_file: str) -> str:
    return weights_record(where, gguf_file)["sha256"]
