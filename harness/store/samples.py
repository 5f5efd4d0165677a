"""The sample store: append-only JSONL of completions, keyed by what determines them.

Samples are the expensive artifact of every paper here, so they are never drawn twice:
- an entry is keyed by (model identity, data file sha256, prompt fingerprint, sampling params incl. seed);
  the number of samples is *not* part of the key, so asking for n=64 after n=16 draws only 48 more;
- each sample is seeded by (seed, problem id, sample index) in the backend, so a resumed or sharded
  run draws exactly the samples an uninterrupted run would have drawn;
- each process appends to its own shard file (`samples.<shard>.jsonl`), flushed line by line; a kill
  can leave at most one partial last line, which is ignored on read and cut off before the next append;
- reading merges every shard file of the entry, so Hydra multirun jobs that split a dataset by
  offset/stride land in one entry that a later run reads whole.
JSONL rather than parquet because parquet cannot be appended to line by line; pandas reads it directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from harness.errors import DataError
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams

SAMPLE_COLUMNS = ["problem_id", "index", "text", "num_tokens", "prompt_tokens", "finish_reason"]


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.blake2b(blob, digest_size=32).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "model"


@dataclass(frozen=True)
class EntryKey:
    model: str  # LoadedModel.identity
    data_sha256: str
    prompt: str  # prompt config name, for humans
    prompt_fingerprint: str  # hash of everything that shapes the rendered prompt
    params: Mapping[str, Any]  # SamplingParams.as_dict()

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "data_sha256": self.data_sha256,
            "prompt": self.prompt,
            "prompt_fingerprint": self.prompt_fingerprint,
            "params": dict(self.params),
        }

    @property
    def digest(self) -> str:
        return fingerprint(self.as_dict())


class StoreEntry:
    def __init__(self, directory: Path, key: EntryKey, shard: str = "main"):
        self.dir = directory
        self.key = key
        self.shard = _slug(shard)
        self._cache: pd.DataFrame | None = None

    # ---- reading -------------------------------------------------------------------------------
    def shard_files(self) -> list[Path]:
        return sorted(self.dir.glob("samples.*.jsonl"))

    def frame(self) -> pd.DataFrame:
        """All completions of this entry (every shard), one row per (problem_id, index)."""
        if self._cache is None:
            rows: list[dict] = []
            for path in self.shard_files():
                rows.extend(_read_jsonl_tolerant(path))
            df = pd.DataFrame(rows, columns=SAMPLE_COLUMNS) if rows else pd.DataFrame(columns=SAMPLE_COLUMNS)
            df = df.drop_duplicates(["problem_id", "index"], keep="first")
            self._cache = df.sort_values(["problem_id", "index"], kind="stable").reset_index(drop=True)
        return self._cache

    def missing(self, problem_ids: Sequence[str], n: int) -> dict[str, list[int]]:
        """For each problem, the sample indices in range(n) not yet in the store."""
        have: dict[str, set[int]] = {}
        df = self.frame()
        for pid, idx in zip(df["problem_id"], df["index"]):
            have.setdefault(pid, set()).add(int(idx))
        out = {}
        for pid in problem_ids:
            todo = [i for i in range(n) if i not in have.get(pid, ())]
            if todo:
                out[pid] = todo
        return out

    # ---- writing -------------------------------------------------------------------------------
    def append(self, completions: Iterable[Completion], fsync_every: int = 64) -> int:
        """Append completions as they arrive; returns how many were written."""
        path = self.dir / f"samples.{self.shard}.jsonl"
        _cut_partial_tail(path)
        written = 0
        with open(path, "a", encoding="utf-8") as f:
            for c in completions:
                record = {
                    "problem_id": c.key,
                    "index": c.index,
                    "text": c.text,
                    "num_tokens": c.num_tokens,
                    "prompt_tokens": c.prompt_tokens,
                    "finish_reason": c.finish_reason,
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                written += 1
                if written % fsync_every == 0:
                    os.fsync(f.fileno())
            os.fsync(f.fileno())
        self._cache = None
        return written

    # ---- derived data kept beside the samples (e.g. grades) ------------------------------------
    def sidecar(self, name: str) -> Path:
        return self.dir / f"{name}.{self.shard}.jsonl"

    def read_sidecars(self, name: str) -> list[dict]:
        rows: list[dict] = []
        for path in sorted(self.dir.glob(f"{name}.*.jsonl")):
            rows.extend(_read_jsonl_tolerant(path))
        return rows

    def append_sidecar(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        path = self.sidecar(name)
        _cut_partial_tail(path)
        with open(path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(dict(r), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


class SampleStore:
    def __init__(self, root: str | Path, shard: str = "main"):
        self.root = Path(root)
        self.shard = shard

    def entry(
        self,
        model_identity: str,
        data_sha256: str,
        prompt_name: str,
        prompt_fingerprint: str,
        params: SamplingParams,
    ) -> StoreEntry:
        key = EntryKey(model_identity, data_sha256, prompt_name, prompt_fingerprint, params.as_dict())
        directory = self.root / _slug(model_identity.split("@")[0]) / key.digest
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / "key.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored != json.loads(json.dumps(key.as_dict())):
                raise DataError(f"{meta}: store key does not match its directory (corrupted store?)")
        else:
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps(key.as_dict(), indent=2, sort_keys=True))
            tmp.replace(meta)
        return StoreEntry(directory, key, shard=self.shard)


def draw_samples(
    entry: StoreEntry,
    sampler: Sampler,
    prompts: Mapping[str, str],
    n: int,
    params: SamplingParams,
    progress: bool = True,
    desc: str = "sampling",
) -> pd.DataFrame:
    """Ensure n samples per prompt are in the store (drawing only the missing ones); return them.

    Completions are appended as the backend yields them, so a kill loses only sequences in flight.
    """
    missing = entry.missing(list(prompts), n)
    todo = sum(len(v) for v in missing.values())
    if todo:
        requests = [SampleRequest(pid, prompts[pid], tuple(idx)) for pid, idx in missing.items()]
        stream = sampler.sample(requests, params)
        if progress:
            from tqdm.auto import tqdm

            have = len(prompts) * n - todo
            stream = tqdm(stream, total=todo, desc=f"{desc} ({have} reused)", unit="sample", dynamic_ncols=True)
        entry.append(stream)
    df = entry.frame()
    df = df[df["problem_id"].isin(set(prompts)) & (df["index"] < n)]
    got = len(df)
    if got != len(prompts) * n:
        raise DataError(f"{entry.dir}: expected {len(prompts) * n} samples after drawing, found {got}")
    df = df.reset_index(drop=True)
    df.attrs["drawn_now"] = todo  # the rest came from the store (reports show both)
    return df


def _read_jsonl_tolerant(path: Path) -> list[dict]:
    """Rows of a store file; a torn last line (the process was killed mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):  # no trailing newline: the write was cut
                continue
            raise DataError(f"{path}:{lineno}: not valid JSON (store file corrupted)") from None
    return rows


def _cut_partial_tail(path: Path) -> None:
    """Drop a torn last line so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)
