"""Published numbers: what each paper reported, with its source, for side-by-side comparison only.

A regenerated number is never replaced by, or calibrated to, a published one: `side_by_side` only
places published values in columns of their own next to the regenerated ones.

One YAML file per paper, `results/published/<paper>.yaml` (long form with examples in
results/published/README.md):

    paper: <title>                        # required
    arxiv: "2407.21787"                   # required, a string
    authors / venue / code / data: ...    # optional strings
    provenance:                           # optional: document key -> where that copy of the paper was found
      arxiv_v3: "full text, code corpus file id ..."
    setup:                                # required: key fact -> {value, source, [note, secondary, site, doc]}
      temperature: {value: 0.6, source: "repo llmonk/utils.py GenerateScriptConfig"}
    numbers:                              # required: a list of entries
      - id: fig7_math_l3_8b_coverage_k100 # required, snake_case, unique in the file
        metric: coverage                  # required, snake_case (coverage, accuracy, majority_vote, rm_best_of_n,
                                          #   rm_weighted_vote, pass_at_1, error_rate, win_rate, ...)
        dataset: math                     # required, snake_case (gsm8k, math, math500, ...)
        model: Llama-3-8B-Instruct        # required, as the paper names it
        setting: {k: 100}                 # required mapping of scalars (may be {}): what the number depends on
        value: 0.80                       # required number; in [0, 1] when unit is fraction
        unit: fraction                    # required: one of UNITS
        approximate: true                 # required: true when read off a plot
        source: "Fig. 7, read off ..."    # required: table / figure / section / file, in words
        n: 128                            # optional: problems behind the number
        secondary: true                   # optional: taken from a secondary source ...
        site: "..."                       # ... which must then be named here
        bound: lower                      # optional: the source states '> value' (lower) or '< value' (upper)
        doc: arxiv_v3                     # optional: a key of `provenance`
        note: "..."                       # optional
    missing:                              # optional: numbers searched for and not found
      - {what: "...", searched: "..."}
    notes: ["..."]                        # optional
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import yaml

from harness.errors import DataError

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "results" / "published"
UNITS = ("fraction", "percent", "points", "flops", "score", "usd", "count", "coefficient")
REQUIRED_TOP = ("paper", "arxiv", "setup", "numbers")
OPTIONAL_TOP = ("authors", "venue", "code", "data", "provenance", "missing", "notes")
REQUIRED_ENTRY = ("id", "metric", "dataset", "model", "setting", "value", "unit", "approximate", "source")
OPTIONAL_ENTRY = ("n", "secondary", "site", "bound", "doc", "note")
ENTRY_FIELDS = ("id", "metric", "dataset", "model", "unit")  # join keys read from the entry, not its setting
_SNAKE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


@dataclass(frozen=True)
class Entry:
    id: str
    metric: str
    dataset: str
    model: str
    setting: Mapping[str, Any] = field(hash=False)
    value: float
    unit: str
    approximate: bool
    source: str
    n: int | None = None
    secondary: bool = False
    site: str | None = None
    bound: str | None = None
    doc: str | None = None
    note: str | None = None

    def key(self, name: str) -> Any:
        """A join key: an entry field (metric, dataset, model, unit, id) or a setting key; None if absent."""
        return getattr(self, name) if name in ENTRY_FIELDS else self.setting.get(name)

    def value_text(self) -> str:
        """The number as the paper gives it: '≈95.7%' (fraction, read off a plot), '> 0.5 points'."""
        bound = {"lower": "> ", "upper": "< "}.get(self.bound or "", "")
        number = f"{self.value * 100:.1f}%" if self.unit == "fraction" else f"{self.value:g} {self.unit}"
        return f"{bound}{'≈' if self.approximate else ''}{number}"

    def label(self) -> str:
        """The source as shown beside a regenerated number, secondary site included."""
        text = self.source + (f" [secondary: {self.site}]" if self.secondary else "")
        return text + (" [approximate]" if self.approximate and "read off" not in self.source else "")


@dataclass(frozen=True)
class PublishedNumbers:
    paper_key: str
    path: Path
    title: str
    arxiv: str
    setup: Mapping[str, Mapping[str, Any]]
    entries: tuple[Entry, ...]
    missing: tuple[Mapping[str, Any], ...] = ()
    provenance: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> Entry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise KeyError(f"{self.path}: no entry with id {entry_id!r}")

    def select(self, metric: str | None = None, dataset: str | None = None, model: str | None = None,
               **setting: Any) -> list[Entry]:
        """Entries matching every given criterion; a setting key the entry lacks does not match."""
        wanted = {"metric": metric, "dataset": dataset, "model": model}
        out = []
        for e in self.entries:
            if any(v is not None and getattr(e, k) != v for k, v in wanted.items()):
                continue
            if all(k in e.setting and _norm(e.setting[k]) == _norm(v) for k, v in setting.items()):
                out.append(e)
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per entry; setting keys become `setting.<key>` columns."""
        rows = []
        for e in self.entries:
            row = {f: getattr(e, f) for f in REQUIRED_ENTRY + OPTIONAL_ENTRY if f != "setting"}
            row.update({f"setting.{k}": v for k, v in e.setting.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def published_root() -> Path:
    """results/published, or the folder in $LLMREP_PUBLISHED (a checkout's own numbers, tests)."""
    return Path(os.environ.get("LLMREP_PUBLISHED") or DEFAULT_ROOT)


def load_published(paper: str, root: Path | None = None) -> PublishedNumbers:
    """Load and validate results/published/<paper>.yaml; a missing or malformed file raises DataError naming file
    and field. Every replication's entry point calls this at start-up (harness.cli), so a broken file stops the run
    before any model is loaded, and the report's published section can rely on it."""
    root = published_root() if root is None else Path(root)
    path = root / f"{paper}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(Path(root).glob("*.yaml"))) or "none"
        raise DataError(f"{path}: no published numbers for paper {paper!r} (known: {known})")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return _validate(path, paper, raw)


def published_text(paper: str, metric: str, dataset: str | None = None, models: Sequence[str] = (),
                   **setting: Any) -> str | None:
    """A claim's published side: each matching number with its model, setting and source; None if there is none."""
    entries = [e for e in load_published(paper).select(metric=metric, dataset=dataset, **setting)
               if not models or e.model in models]
    if not entries:
        return None
    return "; ".join(f"{e.model} on {e.dataset}: {e.value_text()}" + (f" at {_setting_text(e.setting)}" if e.setting else "")
                     + f" ({e.label()})" for e in entries)


def claim(name: str, status: str, evidence: str, n: int | None = None, ours: str | None = None,
          published: str | None = None) -> Any:
    """A report Claim carrying its numbers: n (problems), ours (our number with its CI, as text) and published
    (the paper's number with its model). Where harness.reporting.report.Claim does not have those fields yet,
    the numbers are appended to the evidence instead, so no report loses them."""
    from harness.reporting.report import Claim

    numbers = {"n": n, "ours": ours, "published": published}
    fields = {f.name for f in dataclasses.fields(Claim)}
    if set(numbers) <= fields:
        return Claim(name, status, evidence, **numbers)
    shown = [f"ours: {ours}" if ours else "", f"published: {published}" if published else ""]
    return Claim(name, status, "; ".join([evidence, *filter(None, shown)]))


def _setting_text(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def load_all(root: Path | None = None) -> dict[str, PublishedNumbers]:
    root = published_root() if root is None else Path(root)
    return {p.stem: load_published(p.stem, root) for p in sorted(root.glob("*.yaml"))}


def side_by_side(regenerated: pd.DataFrame, published: Sequence[Entry], join_on: Sequence[str],
                 how: str = "outer", sort: bool = True) -> pd.DataFrame:
    """Regenerated rows with the matching published values beside them, in `published_*` columns.

    Every column of `regenerated` (value, n, CIs, model...) is passed through untouched. A join key is
    a column of `regenerated` and, on the published side, an entry field (metric, dataset, model, unit,
    id) or a setting key; numbers compare by value (k=100 matches k=100.0). A regenerated row matched by
    several entries (e.g. two published models) appears once per entry; an unmatched regenerated row
    gets empty (NaN/None, never 0) published columns. With how="outer", published entries that match
    no regenerated row are appended with empty regenerated columns; entries lacking a join key are
    not comparable on those keys and are left out. With sort=True rows are ordered by the join keys
    (stable, so regenerated order is kept within equal keys).
    """
    if how not in ("outer", "left"):
        raise ValueError(f"side_by_side: how must be 'outer' or 'left', got {how!r}")
    join_on = list(join_on)
    absent = [k for k in join_on if k not in regenerated.columns]
    if absent:
        raise ValueError(f"side_by_side: join keys {absent} are not columns of the regenerated frame")

    comparable = [e for e in published if all(e.key(k) is not None for k in join_on)]
    by_key: dict[tuple, list[Entry]] = {}
    for e in comparable:
        by_key.setdefault(tuple(_norm(e.key(k)) for k in join_on), []).append(e)

    pairs: list[tuple[int | None, Entry | None]] = []
    used: set[int] = set()  # by object identity: entries of two papers may share an id
    for i, keys in enumerate(regenerated[join_on].itertuples(index=False, name=None)):
        matches = by_key.get(tuple(_norm(v) for v in keys), [])
        if matches:
            pairs.extend((i, e) for e in matches)
            used.update(id(e) for e in matches)
        else:
            pairs.append((i, None))
    if how == "outer":
        pairs.extend((None, e) for e in comparable if id(e) not in used)
    if sort:
        def order(pair):
            i, e = pair
            return tuple(_norm(regenerated[k].iloc[i] if i is not None else e.key(k)) for k in join_on)
        pairs.sort(key=order)

    # Regenerated rows first, published-only rows after, then put back in `pairs` order.
    head = regenerated.iloc[[i for i, _ in pairs if i is not None]].reset_index(drop=True)
    extra = [e for i, e in pairs if i is None]
    ours = head
    if extra:
        filler = pd.DataFrame([{k: e.key(k) for k in join_on} for e in extra])
        # concat aligns columns; regenerated columns stay empty for published-only rows.
        ours = _keep_exact_ints(pd.concat([head, filler], ignore_index=True), head)
    slots, n_head, n_extra = [], 0, 0
    for i, _ in pairs:
        slots.append(n_head if i is not None else len(head) + n_extra)
        n_head, n_extra = (n_head + 1, n_extra) if i is not None else (n_head, n_extra + 1)
    ours = ours.iloc[slots].reset_index(drop=True)
    pub = [e for _, e in pairs]
    ours["published_id"] = [e.id if e else None for e in pub]
    ours["published_model"] = [e.model if e else None for e in pub]
    ours["published_value"] = [float(e.value) if e else math.nan for e in pub]
    ours["published_unit"] = [e.unit if e else None for e in pub]
    if any(e is not None and e.bound for e in pub):
        ours["published_bound"] = [e.bound if e else None for e in pub]
    ours["published_approximate"] = [e.approximate if e else None for e in pub]
    ours["published_n"] = pd.Series([e.n if e else None for e in pub], dtype=object)
    ours["published_source"] = [e.label() if e else None for e in pub]
    return ours


# ---------------------------------------------------------------------------------------------- helpers

class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a duplicated key here is a data error."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _norm(v: Any) -> tuple:
    """A comparable form for join/selection keys: numbers by value, bools apart from 0/1."""
    if v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isnan(v)):
        return ("none",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, numbers.Number):
        return ("num", float(v))
    return ("str", str(v))


def _keep_exact_ints(out: pd.DataFrame, head: pd.DataFrame) -> pd.DataFrame:
    """`out` is `head` plus appended published-only rows. A column whose dtype changed in the concat
    (int gaining empty cells, or an int key meeting a float key) becomes an object column holding
    `head`'s original values, so a regenerated n=30 or k=64 is not turned into 30.0 / 64.0."""
    for col in head.columns:
        if out[col].dtype != head[col].dtype:
            tail = [None if _norm(v) == ("none",) else v for v in out[col].iloc[len(head):].tolist()]
            out[col] = pd.Series(head[col].tolist() + tail, index=out.index, dtype=object)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _validate(path: Path, paper: str, raw: Any) -> PublishedNumbers:
    def fail(where: str, msg: str):
        raise DataError(f"{path}: {where}: {msg}")

    if not isinstance(raw, dict):
        fail("top level", "must be a mapping with keys " + ", ".join(REQUIRED_TOP))
    for k in REQUIRED_TOP:
        if k not in raw:
            fail("top level", f"missing required field {k!r}")
    for k in raw:
        if k not in REQUIRED_TOP + OPTIONAL_TOP:
            fail("top level", f"unknown field {k!r} (allowed: {', '.join(REQUIRED_TOP + OPTIONAL_TOP)})")
    for k in ("paper", "arxiv"):
        if not isinstance(raw[k], str) or not raw[k].strip():
            fail(f"field {k!r}", f"must be a non-empty string (quote arXiv ids), got {raw[k]!r}")

    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict) or not all(isinstance(v, str) for v in provenance.values()):
        fail("field 'provenance'", "must map document keys to descriptions (strings)")

    setup = raw["setup"]
    if not isinstance(setup, dict) or not setup:
        fail("field 'setup'", "must be a non-empty mapping of key fact -> {value, source}")
    for key, fact in setup.items():
        where = f"setup.{key}"
        if not isinstance(fact, dict) or "value" not in fact:
            fail(where, "must be a mapping with fields 'value' and 'source'")
        _check_source(fail, where, fact, provenance)

    nums = raw["numbers"]
    if not isinstance(nums, list) or not nums:
        fail("field 'numbers'", "must be a non-empty list of entries")
    entries, seen = [], set()
    for i, item in enumerate(nums):
        entries.append(_entry(fail, i, item, provenance))
        if entries[-1].id in seen:
            fail(f"numbers[{i}] (id={entries[-1].id})", "duplicate id")
        seen.add(entries[-1].id)

    missing = raw.get("missing") or []
    if not isinstance(missing, list):
        fail("field 'missing'", "must be a list of {what, searched}")
    for i, m in enumerate(missing):
        if not isinstance(m, dict) or not all(isinstance(m.get(f), str) and m.get(f) for f in ("what", "searched")):
            fail(f"missing[{i}]", "must be a mapping with non-empty strings 'what' and 'searched'")
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        fail("field 'notes'", "must be a list of strings")

    return PublishedNumbers(paper_key=paper, path=path, title=raw["paper"].strip(), arxiv=raw["arxiv"].strip(),
                            setup=setup, entries=tuple(entries), missing=tuple(missing),
                            provenance=provenance, notes=tuple(notes))


def _check_source(fail, where: str, item: dict, provenance: Mapping[str, str]) -> None:
    if not isinstance(item.get("source"), str) or not item["source"].strip():
        fail(where, "field 'source' must be a non-empty string")
    if "secondary" in item and not isinstance(item["secondary"], bool):
        fail(where, f"field 'secondary' must be true or false, got {item['secondary']!r}")
    if item.get("secondary") and not (isinstance(item.get("site"), str) and item["site"].strip()):
        fail(where, "field 'site' must name the secondary source when secondary is true")
    if "doc" in item and item["doc"] not in provenance:
        fail(where, f"field 'doc' is {item['doc']!r}, not a key of 'provenance'")


def _entry(fail, i: int, item: Any, provenance: Mapping[str, str]) -> Entry:
    if not isinstance(item, dict):
        fail(f"numbers[{i}]", "must be a mapping")
    where = f"numbers[{i}] (id={item.get('id', '?')})"
    for f in REQUIRED_ENTRY:
        if f not in item:
            fail(where, f"missing required field {f!r}")
    for f in item:
        if f not in REQUIRED_ENTRY + OPTIONAL_ENTRY:
            fail(where, f"unknown field {f!r}")
    for f in ("id", "metric", "dataset"):
        if not isinstance(item[f], str) or not _SNAKE.match(item[f]):
            fail(where, f"field {f!r} must be snake_case, got {item[f]!r}")
    if not isinstance(item["model"], str) or not item["model"].strip():
        fail(where, f"field 'model' must be a non-empty string, got {item['model']!r}")
    setting = item["setting"]
    if not isinstance(setting, dict):
        fail(where, f"field 'setting' must be a mapping (use {{}} for none), got {setting!r}")
    for k, v in setting.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (str, bool)) or _is_number(v)):
            fail(where, f"field 'setting' key {k!r} must map to a scalar, got {v!r}")
    value = item["value"]
    if not _is_number(value):
        fail(where, f"field 'value' must be a finite number, got {value!r}")
    if item["unit"] not in UNITS:
        fail(where, f"field 'unit' must be one of {', '.join(UNITS)}, got {item['unit']!r}")
    if item["unit"] == "fraction" and not 0.0 <= value <= 1.0:
        fail(where, f"field 'value' is {value!r} but unit is fraction (expected a value in [0, 1])")
    if not isinstance(item["approximate"], bool):
        fail(where, f"field 'approximate' must be true or false, got {item['approximate']!r}")
    if "n" in item and not (isinstance(item["n"], int) and not isinstance(item["n"], bool) and item["n"] > 0):
        fail(where, f"field 'n' must be a positive integer, got {item['n']!r}")
    if "bound" in item and item["bound"] not in ("lower", "upper"):
        fail(where, f"field 'bound' must be 'lower' or 'upper', got {item['bound']!r}")
    if "note" in item and not isinstance(item["note"], str):
        fail(where, "field 'note' must be a string")
    _check_source(fail, where, item, provenance)
    return Entry(id=item["id"], metric=item["metric"], dataset=item["dataset"], model=item["model"].strip(),
                 setting=dict(setting), value=float(value), unit=item["unit"], approximate=item["approximate"],
                 source=item["source"].strip(), n=item.get("n"), secondary=item.get("secondary", False),
                 site=item.get("site"), bound=item.get("bound"), doc=item.get("doc"), note=item.get("note"))
