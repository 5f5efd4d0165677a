"""The sample store: append-only JSONL of completions, keyed by what determines them.

Samples are the expensive artifact of every paper here, so they are never drawn twice:
- an entry is keyed by (model identity by content, data file sha256, prompt fingerprint, sampling params incl.
  seed, backend numerics such as the matmul dtype); the number of samples is *not* part of the key, so asking
  for n=64 after n=16 draws only 48 more;
- each sample is seeded by (seed, problem id, sample index) in the backend, so a resumed or sharded
  run draws exactly the samples an uninterrupted run would have drawn;
- every process writes only its own file (`samples.<shard>.<host>-<pid>-<random>.jsonl`), one whole line per
  write, so concurrent writers never tear each other's lines; reading merges every file of the entry and keeps
  the first row of each (problem_id, index);
- work is claimed per problem with a non-blocking flock on `locks/<hash of problem id>.lock` (released by the
  kernel when a process dies): processes filling one entry at once split the problems, then wait for the
  problems others hold and draw only what is still missing, so no sample is drawn twice;
- a kill can leave one torn last line in the killed process's file: ignored on read. A last line that is a
  complete record without its newline counts, and its writer completes it with a newline before appending.
JSONL rather than parquet because parquet cannot be appended to line by line; pandas reads it directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import secrets
import socket
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd

from harness.errors import DataError
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams

SAMPLE_COLUMNS = ["problem_id", "index", "text", "num_tokens", "prompt_tokens", "finish_reason"]
SAMPLE_TYPES = {"problem_id": str, "index": int, "text": str, "num_tokens": int, "prompt_tokens": int,
                "finish_reason": str}
KEY_FILE = "key.json"
LOCK_DIR = "locks"


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.blake2b(blob, digest_size=32).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60].strip("_") or "model"


_writer: tuple[int, str] | None = None


def writer_id() -> str:
    """This process's name on the files it writes (host, pid and a random part: pids are reused)."""
    global _writer
    if _writer is None or _writer[0] != os.getpid():  # a forked child is another writer
        host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:40]
        _writer = (os.getpid(), f"{host}-{os.getpid()}-{secrets.token_hex(3)}")
    return _writer[1]


@dataclass(frozen=True)
class EntryKey:
    model: str  # LoadedModel.identity (by content)
    data_sha256: str
    prompt: str  # prompt config name, for humans
    prompt_fingerprint: str  # hash of everything that shapes the rendered prompt
    params: Mapping[str, Any]  # SamplingParams.as_dict()
    numerics: Mapping[str, Any] = field(default_factory=dict)  # the backend's numerics (sampler.numerics)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "data_sha256": self.data_sha256,
            "prompt": self.prompt,
            "prompt_fingerprint": self.prompt_fingerprint,
            "params": dict(self.params),
            "numerics": dict(self.numerics),
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
        """Every sample file of the entry (all shards, all writers)."""
        return sorted(self.dir.glob("samples.*.jsonl"))

    def refresh(self) -> None:
        """Forget what was read: other processes may have written since."""
        self._cache = None

    def frame(self) -> pd.DataFrame:
        """All completions of this entry (every file), one row per (problem_id, index)."""
        if self._cache is None:
            rows: list[dict] = []
            for path in self.shard_files():
                rows.extend(read_records(path, _check_sample))
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
    def own_file(self, name: str = "samples") -> Path:
        """The file this process appends `name` rows to (no other process writes it)."""
        return self.dir / f"{name}.{self.shard}.{writer_id()}.jsonl"

    def append(self, completions: Iterable[Completion], fsync_every: int = 64) -> int:
        """Append completions as they arrive; returns how many were written."""
        rows = (
            {"problem_id": c.key, "index": c.index, "text": c.text, "num_tokens": c.num_tokens,
             "prompt_tokens": c.prompt_tokens, "finish_reason": c.finish_reason}
            for c in completions
        )
        written = _append_records(self.own_file(), rows, _check_sample, fsync_every)
        self._cache = None
        return written

    def lock(self, problem_id: str) -> Path:
        """The lock file that claims the drawing of `problem_id`'s samples."""
        return self.dir / LOCK_DIR / f"{hashlib.sha256(problem_id.encode()).hexdigest()[:24]}.lock"

    # ---- derived data kept beside the samples (e.g. grades) ------------------------------------
    def sidecar(self, name: str) -> Path:
        return self.own_file(name)

    def read_sidecars(self, name: str) -> list[dict]:
        """`name`'s rows from every shard and writer."""
        rows: list[dict] = []
        for path in sorted(self.dir.glob(f"{name}.*.jsonl")):
            rows.extend(read_records(path, _check_object))
        return rows

    def append_sidecar(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        _append_records(self.own_file(name), (dict(r) for r in rows), _check_object)


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
        numerics: Mapping[str, Any] | None = None,
        label: str | None = None,
    ) -> StoreEntry:
        """The entry for this key; `numerics` is the sampler's (`getattr(sampler, "numerics", {})`).

        The directory is `<root>/<label>/<key digest>`; `label` (e.g. the model's config name) is only for
        humans: an entry is found by its digest under any label, so one model under two names shares samples.
        """
        key = EntryKey(model_identity, data_sha256, prompt_name, prompt_fingerprint, params.as_dict(),
                       dict(numerics or {}))
        directory = self.find(key.digest) or self.root / _slug(label or model_identity) / key.digest
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / KEY_FILE
        if meta.exists():
            try:
                stored = json.loads(meta.read_text())
            except ValueError:
                raise DataError(f"{meta}: not valid JSON (corrupted store?)") from None
            if stored != json.loads(json.dumps(key.as_dict())):
                raise DataError(f"{meta}: store key does not match its directory (corrupted store?)")
        else:  # several processes may get here at once: each writes the same key under its own temporary name
            write_json_atomically(meta, key.as_dict())
        return StoreEntry(directory, key, shard=self.shard)

    def find(self, digest: str) -> Path | None:
        """The existing directory of the entry with this key digest, under whatever label."""
        found = sorted(p for p in self.root.glob(f"*/{digest}") if p.is_dir())
        return found[0] if found else None


def write_json_atomically(path: Path, obj: Any) -> None:
    """Write via a uniquely named temporary file and a rename: concurrent writers never leave a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    Problems another process is drawing are left to it: this one draws what it could claim, then waits
    for the rest and draws only what is still missing (e.g. the other process died).
    """
    entry.refresh()
    missing = entry.missing(list(prompts), n)
    todo = sum(len(v) for v in missing.values())
    bar = None
    if todo and progress:
        from tqdm.auto import tqdm

        have = len(prompts) * n - todo
        bar = tqdm(total=todo, desc=f"{desc} ({have} reused)", unit="sample", dynamic_ncols=True)
    drawn = 0
    try:
        waiting = list(missing)
        for blocking in (False, True):
            # Waiting happens in one global order (of lock names), so two waiting processes never deadlock.
            pending = sorted(waiting, key=lambda pid: entry.lock(pid).name) if blocking else waiting
            waiting = []
            while pending:
                batch, pending = pending[:_claim_batch()], pending[_claim_batch():]
                with ExitStack() as held:
                    claimed = [pid for pid in batch if _claim(held, entry.lock(pid), blocking)]
                    waiting += [pid for pid in batch if pid not in claimed]
                    entry.refresh()  # a problem claimed now may have been finished since it was read
                    still = entry.missing(claimed, n)
                    if still:
                        requests = [SampleRequest(pid, prompts[pid], tuple(idx)) for pid, idx in still.items()]
                        drawn += entry.append(_counted(sampler.sample(requests, params), bar))
    finally:
        if bar is not None:
            bar.close()
    entry.refresh()
    df = entry.frame()
    df = df[df["problem_id"].isin(set(prompts)) & (df["index"] < n)]
    got = len(df)
    if got != len(prompts) * n:
        raise DataError(f"{entry.dir}: expected {len(prompts) * n} samples after drawing, found {got}")
    df = df.reset_index(drop=True)
    df.attrs["drawn_now"] = drawn  # the rest came from the store or from another process (reports show both)
    return df


def _claim_batch() -> int:
    """Problems claimed at once: one open lock file each, well inside the process's file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(512, (soft if soft > 0 else 1024) // 4))


def _claim(held: ExitStack, lock: Path, blocking: bool) -> bool:
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    f = held.enter_context(open(lock, "a+b"))
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    held.callback(fcntl.flock, f.fileno(), fcntl.LOCK_UN)
    return True


def _counted(stream: Iterator[Completion], bar: Any) -> Iterator[Completion]:
    for c in stream:
        yield c
        if bar is not None:
            bar.update(1)


# ---- the line format ----------------------------------------------------------------------------
def _check_sample(record: Any) -> str | None:
    """Why `record` is not a sample row, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a sample record"
    for name, kind in SAMPLE_TYPES.items():
        if name not in record:
            return f"sample record without '{name}'"
        value = record[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"sample record field '{name}' is {type(value).__name__}, not {kind.__name__}"
    return None


def _check_object(record: Any) -> str | None:
    return None if isinstance(record, dict) else f"a {type(record).__name__}, not a JSON object"


def _parse(line: str, check) -> tuple[Any, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None, "not valid JSON (store file corrupted)"
    return record, check(record)


def read_records(path: Path, check=_check_sample) -> list[dict]:
    """Rows of a store file. A last line without newline that is not a complete record is a write in
    progress or one cut by a kill: skipped. Any other bad line is a DataError naming file and line."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, problem = _parse(line, check)
        if problem is None:
            rows.append(record)
        elif not (lineno == len(lines) and record is None):  # only a torn tail (unparseable, no newline) is skipped
            raise DataError(f"{path}:{lineno}: {problem}")
    return rows


def _append_records(path: Path, rows: Iterable[dict], check, fsync_every: int = 64) -> int:
    """Append rows to this process's own file, one whole line per write."""
    _mend_tail(path, check)
    written = 0
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            written += 1
            if written % fsync_every == 0:
                os.fsync(f.fileno())
        os.fsync(f.fileno())
    return written


def _mend_tail(path: Path, check) -> None:
    """Before appending to our own file: a complete last record without its newline gets the newline (the
    reader counts it, so it stays); a torn one (a kill mid-write) is cut off."""
    if not path.exists() or path.stat().st_size == 0:
        return
    newline = b"\n"
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(newline):
            return
        start = data.rfind(newline) + 1
        try:
            record = json.loads(data[start:].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            f.truncate(start)
            return
        problem = check(record)
        if problem is not None:
            raise DataError(f"{path}:{data.count(newline) + 1}: {problem}")
        f.write(b"\n")
