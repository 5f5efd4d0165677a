"""Re-key store entries written before models were identified by content.

    python -m harness.store.migrate [--root results/store] [--dtype float32] [--numerics JSON] [--dry-run]

An old entry's key names its model `name@<absolute source path>` and has no `numerics`. Where that source
file or folder still exists, it is hashed and the entry's files are linked (or copied) into the entry of the
new key, under names that cannot collide with other files there; the old directory gets a `migrated.json`
saying where its samples went and is otherwise left as it was: nothing is ever deleted. Entries whose
source is gone, a hub id (the commit it was drawn at is unknown) or a random init are reported, not moved.

Old keys do not say which dtype the weights were loaded in nor the backend's numerics: `--dtype` (unless a
checkpoint folder's model.yaml says) and `--numerics` state them; they become part of the new key. The defaults
are what the old defaults drew with: float32 weights, float32 products (the CPU samplers' `numerics`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.models.identity import record_identity, weights_record
from harness.store.samples import KEY_FILE, LOCK_DIR, EntryKey, SampleStore, write_json_atomically

MIGRATED = "migrated.json"
OLD_DEFAULT_NUMERICS = {"matmul_dtype": "float32"}


def old_source(model: str) -> tuple[str, Path | None]:
    """(name, existing source path or None) of an old `name@source` model string."""
    name, _, source = model.partition("@")
    path = Path(source) if source else None
    return name, path if path is not None and path.is_absolute() and path.exists() else None


def new_identity(source: Path, dtype: str) -> str:
    if source.is_file():
        record = weights_record(str(source.parent), source.name)
    else:
        dtype = _checkpoint_dtype(source) or dtype
        record = weights_record(str(source), None)
    return record_identity({**record, "dtype": dtype})


def _checkpoint_dtype(folder: Path) -> str | None:
    """The dtype a harness checkpoint folder's model.yaml loads it in (harness.training.checkpoints)."""
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.load(folder / "model.yaml").get("dtype") or "") or None
    except (OSError, ValueError, ImportError):
        return None


def _carry(old_dir: Path, new_dir: Path, tag: str) -> int:
    """Link (or copy) the old entry's data files into the new entry under `<stem>.migrated-<tag>.jsonl`."""
    carried = 0
    for path in sorted(old_dir.glob("*.jsonl")):
        target = new_dir / f"{path.stem}.migrated-{tag}.jsonl"
        if target.exists():
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        carried += 1
    return carried


def migrate(root: Path, dtype: str = "float32", numerics: dict | None = None, dry_run: bool = False) -> dict:
    """Re-key every old entry under `root`; returns {"migrated": [...], "current": [...], "left": [...]}."""
    report: dict[str, list] = {"migrated": [], "current": [], "left": []}
    for meta in sorted(root.glob(f"*/*/{KEY_FILE}")):
        old_dir = meta.parent
        where = old_dir.relative_to(root).as_posix()
        try:
            key: dict[str, Any] = json.loads(meta.read_text())
        except ValueError:
            report["left"].append({"entry": where, "why": f"{KEY_FILE} is not valid JSON"})
            continue
        if "numerics" in key:
            report["current"].append({"entry": where})
            continue
        if (old_dir / MIGRATED).exists():
            report["current"].append({"entry": where, "migrated_to": json.loads((old_dir / MIGRATED).read_text())["to"]})
            continue
        name, source = old_source(str(key.get("model", "")))
        if source is None:
            why = "its model is a random init: rerun to redraw" if "@random_init(" in str(key.get("model")) else \
                "its model source is not a file or folder on this machine (gone, or a hub id of unknown commit)"
            report["left"].append({"entry": where, "model": key.get("model"), "why": why})
            continue
        new_key = EntryKey(new_identity(source, dtype), key["data_sha256"], key["prompt"], key["prompt_fingerprint"],
                           key["params"], dict(numerics or {}))
        new_dir = SampleStore(root).find(new_key.digest) or old_dir.parent / new_key.digest  # one entry per key
        item = {"entry": where, "model": key["model"], "identity": new_key.model, "to": new_dir.relative_to(root).as_posix()}
        if not dry_run:
            new_dir.mkdir(exist_ok=True)
            if not (new_dir / KEY_FILE).exists():
                write_json_atomically(new_dir / KEY_FILE, new_key.as_dict())
            (new_dir / LOCK_DIR).mkdir(exist_ok=True)
            item["files"] = _carry(old_dir, new_dir, old_dir.name[:8])
            write_json_atomically(old_dir / MIGRATED, {"to": item["to"], "identity": new_key.model})
        report["migrated"].append(item)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.store.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="results/store", help="the store root (default: results/store)")
    parser.add_argument("--dtype", default="float32", help="the dtype old entries' models were loaded in")
    parser.add_argument("--numerics", default=json.dumps(OLD_DEFAULT_NUMERICS),
                        help=f"the backend numerics old entries were drawn with (JSON; default {json.dumps(OLD_DEFAULT_NUMERICS)})")
    parser.add_argument("--dry-run", action="store_true", help="report what would be done; write nothing")
    args = parser.parse_args(argv)
    try:
        numerics = json.loads(args.numerics)
        if not isinstance(numerics, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        print(f"error: --numerics: {err}", file=sys.stderr)
        return 2
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: --root: '{root}' is not a directory", file=sys.stderr)
        return 2
    try:
        report = migrate(root, args.dtype, numerics, args.dry_run)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would re-key" if args.dry_run else "re-keyed"
    for item in report["migrated"]:
        print(f"{verb} {item['entry']} -> {item['to']} ({item['identity']})")
    for item in report["left"]:
        print(f"left {item['entry']}: {item['why']}")
    print(f"{len(report['migrated'])} {verb}, {len(report['current'])} already current, {len(report['left'])} left as they are")
    return 0


if __name__ == "__main__":
    sys.exit(main())
