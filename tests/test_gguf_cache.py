"""A GGUF file is converted by transformers once and loaded from the saved conversion afterwards: the same tokens,
the same weights, the same identity, and a killed or impossible save changes nothing but the time."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.models import gguf_cache
from harness.models.loading import load_model, resolve_source

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Question: 2+2?\nAnswer: 4 <|im_end|> é 😀  \n\n  x", "Natalia sold clips to 48 of her friends in April."]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(gguf_cache.GGUF_CACHE_ENV, str(tmp_path / "gguf"))
    return tmp_path / "gguf"


def embedded() -> tuple[str, str]:
    return resolve_source(OmegaConf.load(ROOT / "conf/model/smollm2_135m.yaml"))


def same_tokenizer(a, b) -> bool:
    chat = [{"role": "user", "content": "hi"}]
    return (
        all(a(t).input_ids == b(t).input_ids for t in TEXTS)
        and a.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        == b.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        and (a.bos_token_id, a.eos_token_id, len(a)) == (b.bos_token_id, b.eos_token_id, len(b))
    )


def test_the_tokenizer_is_converted_once_and_loads_the_same(cache):
    where, gguf = embedded()
    converted = gguf_cache.load_tokenizer(where, gguf)
    folder = next(cache.glob("*/tokenizer"))
    assert (folder / "complete").is_file()
    reloaded = gguf_cache.load_tokenizer(where, gguf)
    assert Path(reloaded.name_or_path) == folder  # read from the conversion, not the GGUF file
    assert same_tokenizer(converted, reloaded)


def test_a_killed_conversion_is_done_again(cache):
    where, gguf = embedded()
    folder = gguf_cache.converted_dir(gguf_cache._sha256(where, gguf), "tokenizer")
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{half a fi")  # a save killed before `complete`
    tokenizer = gguf_cache.load_tokenizer(where, gguf)
    assert (folder / "complete").is_file()
    assert same_tokenizer(tokenizer, gguf_cache.load_tokenizer(where, gguf))


def test_an_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(gguf_cache.GGUF_CACHE_ENV, str(blocker / "gguf"))  # a folder under a file cannot be made
    where, gguf = embedded()
    assert gguf_cache.load_tokenizer(where, gguf)("2+2").input_ids


@pytest.mark.slow
def test_the_model_loads_from_its_conversion_with_the_same_weights_and_identity(cache):
    cfg = OmegaConf.load(ROOT / "conf/model/smollm2_135m.yaml")
    converted, reloaded = load_model(cfg), load_model(cfg)
    assert Path(reloaded.model.config._name_or_path).is_relative_to(cache)
    assert converted.identity == reloaded.identity and converted.identity_info == reloaded.identity_info
    a, b = converted.model.state_dict(), reloaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for model in (converted.model, reloaded.model):  # plain tensors either way: trainable, saveable
        assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
