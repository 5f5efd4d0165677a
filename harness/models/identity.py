"""What a loaded model *is*, by content: the identity the sample store keys samples on.

A path says where weights were, not what they are: a checkpoint folder overwritten with other weights
keeps its path, and one GGUF file has a different path in every virtual environment. So:
- weights from files (a GGUF file, a save_pretrained folder) are identified by the sha256 of the files,
  hashed once and remembered by (resolved path, size, mtime_ns, inode) in a small JSON cache;
- weights from the hub by the hub id and the resolved commit (a branch name moves; a commit does not);
- a randomly initialised model by every field of its shape, its seed, its tokenizer's identity and the
  sha256 of the initialised parameters (which also catches a transformers change of the init scheme);
- and always the dtype the weights were loaded in (bfloat16 samples are not float32 samples).
The config name is not part of the identity: the same weights under two names share their samples.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import ConfigError, DataError
from harness.store.samples import write_json_atomically

HASH_CACHE_ENV = "LLM_REPLICATIONS_HASH_CACHE"
SHORT = 16  # hex digits of a digest shown in an identity string
RACY_NS = 3_000_000_000  # files modified this recently are hashed again next time

# Files of a save_pretrained folder that shape what the model generates besides the weights themselves.
FOLDER_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)
NOT_WEIGHTS = {"training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.bin"}


def user_cache_path(env: str, *default: str) -> Path:
    """$`env` when set, else ~/.cache/llm-replications/<default...> (under $XDG_CACHE_HOME when that is set)."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("llm-replications", *default)


def hash_cache_path() -> Path:
    """Where file digests are remembered (override with $LLM_REPLICATIONS_HASH_CACHE)."""
    return user_cache_path(HASH_CACHE_ENV, "file-sha256.json")


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_cache(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):  # absent or unreadable: the cache is only a shortcut, start afresh
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: str | os.PathLike, cache: Path | None = None) -> str:
    """The sha256 of a file, computed once per (resolved path, size, mtime_ns, inode)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise DataError(f"{path}: weight file not found")
    cache = cache or hash_cache_path()
    stat = _stat_key(resolved)
    known = _read_cache(cache).get(str(resolved))
    if isinstance(known, dict) and {k: known.get(k) for k in stat} == stat and isinstance(known.get("sha256"), str):
        return known["sha256"]
    with open(resolved, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if _stat_key(resolved) != stat or time.time_ns() - stat["mtime_ns"] < RACY_NS:
        # Rewritten while read, or so recently that a same-size rewrite within the file system's timestamp
        # granularity would keep this stat (git's "racily clean" case): not remembered.
        return digest
    try:
        entries = _read_cache(cache)  # re-read: another process may have added digests meanwhile
        entries[str(resolved)] = {**stat, "sha256": digest}
        write_json_atomically(cache, entries)
    except OSError:  # a read-only home still loads models, only slower next time
        pass
    return digest


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files of a save_pretrained folder (safetensors preferred, as transformers loads them)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = sorted(p for p in folder.glob("*.bin") if p.name not in NOT_WEIGHTS)
    if not files:
        raise ConfigError(f"model.path: '{folder}' holds no weight files (*.safetensors, *.bin)")
    return files


def _side_file_digest(path: Path) -> str:
    """Digest of a small config/tokenizer file; JSON minus the transformers version that wrote it."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            obj.pop("transformers_version", None)
            data = json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def files_sha256(files: Iterable[Path], side_files: Iterable[Path] = ()) -> str:
    """One digest for a set of files: a single weight file's own sha256 (what `sha256sum` prints), else
    the sha256 of `name digest` lines (sharded weights and the folder's config/tokenizer files)."""
    files, side_files = list(files), list(side_files)
    if len(files) == 1 and not side_files:
        return file_sha256(files[0])
    lines = [f"{p.name} {file_sha256(p)}" for p in files] + [f"{p.name} {_side_file_digest(p)}" for p in side_files]
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def weights_record(where: str, gguf_file: str | None) -> dict:
    """How weights on disk are identified: {"kind", "sha256", "files"} (names only: no machine path)."""
    if gguf_file:
        path = Path(where) / gguf_file
        return {"kind": "gguf", "sha256": files_sha256([path]), "files": [path.name]}
    folder = Path(where)
    weights = folder_weight_files(folder)
    side = [folder / name for name in FOLDER_SIDE_FILES if (folder / name).is_file()]
    return {"kind": "folder", "sha256": files_sha256(weights, side), "files": [p.name for p in weights + side]}


COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(hub_id: str, revision: str | None, loaded_config: Any = None) -> str:
    """The commit a hub model was loaded at, without network: transformers records it on the config it
    loaded; else the local hub cache's ref for the revision; a 40-hex revision is a commit already."""
    rev = revision or "main"
    if COMMIT.match(rev):
        return rev
    commit = getattr(loaded_config, "_commit_hash", None)
    if isinstance(commit, str) and COMMIT.match(commit):
        return commit
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / rev
        commit = ref.read_text().strip()
        if COMMIT.match(commit):
            return commit
    except (ImportError, OSError):
        pass
    raise ConfigError(f"model.revision: cannot resolve '{rev}' of '{hub_id}' to a commit; set model.revision=<commit sha>")


def json_sha256(obj: Any) -> str:
    """The sha256 of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensors_sha256(model: Any) -> str:
    """The sha256 of a model's parameters and buffers (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8


def identity_string(kind: str, digest: str, dtype: str) -> str:
    """The short identity the store keys on, e.g. "sha256:3f2a…/float32" or "hub:org/name@<commit>/bfloat16"."""
    return f"{kind}:{digest}/{dtype}"


def record_identity(record: Mapping[str, Any]) -> str:
    """The identity string of an identity record (see LoadedModel.identity_record)."""
    if record["kind"] == "hub":
        return identity_string("hub", f"{record['hub_id']}@{record['revision'][:SHORT]}", record["dtype"])
    prefix = "random" if record["kind"] == "random_init" else "sha256"
    return identity_string(prefix, record["sha256"][:SHORT], record["dtype"])
