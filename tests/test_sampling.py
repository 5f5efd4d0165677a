"""Sampling backends: the fast sampler against transformers' generate (greedy tokens, sampled
distribution, warpers), stop strings / EOS, no lost or duplicated samples, batch independence."""
from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.models.loading import LoadedModel, load_model
from harness.sampling import fast as fast_module
from harness.sampling.base import SampleRequest, SamplingParams
from harness.sampling.factory import make_sampler
from harness.sampling.fast import FastHFSampler, nucleus
from harness.sampling.hf import HFGenerateSampler, finish_completion, warpers

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = {
    "short": "Question: 2+2?\nAnswer:",
    "long": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer:",
    "tiny": "x",
}


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(OmegaConf.load(ROOT / "conf/model/tiny_random.yaml"))


@pytest.fixture(scope="module")
def exact(tiny) -> LoadedModel:
    """The tiny model made a bigram model whose logits are exact in float32, so that any batch shape,
    kernel or CPU computes them bit for bit: tests that compare *samples* across backends or batches
    use it, since with the random model's near-uniform logits a last-bit difference can flip a draw.

    The layers add exactly 0 (zero output projections); embeddings are +-1 and the norms have eps 0, so
    the final norm is exactly the embedding; the output weights are integers in {-1, 0, 1} (logit
    std ~2.5) plus a distinct multiple of 2^-16 per token through an always-on embedding unit, so every
    logit is an exactly representable sum and no two tokens tie (a tie would let the two backends'
    sorts order them differently).
    """
    model = copy.deepcopy(tiny.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.copy_(torch.where(torch.rand(embed.shape, generator=gen) < 0.5, 1.0, -1.0))
        embed[:, 0] = 1.0
        signs = torch.where(torch.rand(head.shape, generator=gen) < 0.5, 1.0, -1.0)
        head.copy_(torch.where(torch.rand(head.shape, generator=gen) < 0.1, signs, 0.0))
        head[:, 0] = torch.arange(1, head.shape[0] + 1) / 2**16
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm.variance_epsilon = layer.post_attention_layernorm.variance_epsilon = 0.0
        model.model.norm.variance_epsilon = model.config.rms_norm_eps = 0.0
    lm = copy.copy(tiny)
    lm.model = model
    ids = tiny.tokenizer([PROMPTS["long"], PROMPTS["short"]], add_special_tokens=False, padding=True, return_tensors="pt").input_ids
    with torch.inference_mode():  # the premise: batch shape does not change a single bit
        assert torch.equal(model(ids).logits[0], model(ids[:1]).logits[0])
    return lm


def fast(lm, batch_size=4, **kw) -> FastHFSampler:
    return make_sampler(OmegaConf.create({"name": "hf", "batch_size": batch_size, **kw}), lm)


def ref(lm, batch_size=8) -> HFGenerateSampler:
    return make_sampler(OmegaConf.create({"name": "hf_generate", "batch_size": batch_size}), lm)


def requests(indices=(0, 1, 2)):
    return [SampleRequest(k, p, tuple(indices)) for k, p in PROMPTS.items()]


def by_key(completions):
    return {(c.key, c.index): c for c in completions}


GREEDY_MARGIN = 1e-5  # relative top-2 logit gap: ~100x the rounding of a float32 forward in another batch shape


def plain_greedy(lm: LoadedModel, prompt: str, params: SamplingParams) -> list[int]:
    """transformers generate, batch 1, no padding: the unquestionable reference for greedy tokens.

    Asserts that no step is a near tie, so the tokens are the same for any computation of these
    logits that is right up to rounding (a backend in another batch shape, another CPU).
    """
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = lm.model.generate(ids, do_sample=False, max_new_tokens=params.max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id,
                                output_scores=True, return_dict_in_generate=True)
    for step, scores in enumerate(out.scores):
        top = scores[0].float().topk(2).values
        assert top[0] - top[1] > GREEDY_MARGIN * scores[0].abs().max(), f"near tie at step {step}: greedy is rounding-dependent"
    return out.sequences[0, ids.shape[1] :].tolist()


# ---- factory ---------------------------------------------------------------------------------


def test_factory_selects_backends(tiny):
    assert isinstance(fast(tiny), FastHFSampler) and fast(tiny).name == "hf"
    assert isinstance(ref(tiny), HFGenerateSampler) and ref(tiny).name == "hf_generate"


def test_factory_unknown_backend_names_the_key(tiny):
    with pytest.raises(ConfigError, match="backend.name"):
        make_sampler(OmegaConf.create({"name": "nope"}), tiny)


def test_backend_configs_build(tiny):
    for name in ("hf", "hf_generate"):
        cfg = OmegaConf.load(ROOT / f"conf/backend/{name}.yaml")
        assert make_sampler(cfg, tiny).name == name


def test_bf16_matmuls_are_opt_in_and_checked(tiny):
    assert fast(tiny).matmul_dtype == torch.float32
    with pytest.raises(ConfigError, match="backend.matmul_dtype"):
        fast(tiny, matmul_dtype="float16")
    out = list(fast(tiny, matmul_dtype="bfloat16").sample(requests((0, 1)), SamplingParams(max_new_tokens=6)))
    assert sorted((c.key, c.index) for c in out) == sorted((k, i) for k in PROMPTS for i in (0, 1))


def test_bfloat16_model_samples_with_either_matmul_dtype(tiny):
    """A model loaded in bfloat16: the decode step upcasts it (float32 activations and caches) or keeps
    bf16 products; it used to fail on the first cache write (bf16 keys into a float32 cache)."""
    bf16 = copy.copy(tiny)
    bf16.model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    for matmul in ("float32", "bfloat16"):
        s = fast(bf16, matmul_dtype=matmul)
        out = list(s.sample(requests((0, 1)), SamplingParams(max_new_tokens=6, seed=4)))
        assert sorted((c.key, c.index) for c in out) == sorted((k, i) for k in PROMPTS for i in (0, 1))
        assert all(c.num_tokens == 6 and c.finish_reason == "length" for c in out)
        assert s.numerics == {"matmul_dtype": matmul}
    assert ref(bf16).numerics == {"matmul_dtype": "bfloat16"}  # generate multiplies in the model's dtype


def test_numerics_name_what_changes_the_arithmetic(tiny):
    from harness.sampling.base import Sampler

    assert fast(tiny).numerics == ref(tiny).numerics == {"matmul_dtype": "float32"}
    assert fast(tiny, matmul_dtype="bfloat16").numerics == {"matmul_dtype": "bfloat16"}
    assert Sampler in type(fast(tiny)).__mro__ and Sampler in type(ref(tiny)).__mro__  # the property is inherited


# ---- greedy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flash", [True, False])  # torch's CPU flash kernel, or the matmul/softmax fallback
def test_masked_attention_is_softmax_over_each_rows_visible_keys(flash, monkeypatch):
    if not flash:
        monkeypatch.setattr(fast_module, "_FLASH", None)
    gen = torch.Generator().manual_seed(0)
    rows, kv, rep, slots, hd = 5, 2, 3, 7, 8
    q, k, v = (torch.randn(*shape, generator=gen) for shape in [(rows, kv, rep, hd), (rows, kv, slots, hd), (rows, kv, slots, hd)])
    length = torch.tensor([1, 3, 7, 5, 2])  # visible slots per row
    mask = torch.zeros(rows, slots).masked_fill_(torch.arange(slots)[None] >= length[:, None], float("-inf")).view(rows, 1, 1, slots)
    out, lse = fast_module._masked_attention(q, k, v, mask, scale=0.5)
    for r in range(rows):
        scores = 0.5 * q[r] @ k[r, :, : length[r]].transpose(-1, -2)  # [kv, rep, visible]
        assert torch.allclose(out[r], scores.softmax(-1) @ v[r, :, : length[r]], atol=1e-5)
        assert torch.allclose(lse[r], scores.logsumexp(-1), atol=1e-5)


@pytest.mark.parametrize("inline_max", [0, 1])  # prompt shared by its rows, or copied into the row's cache
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_fast_greedy_equals_plain_generate(tiny, batch_size, inline_max, monkeypatch):
    monkeypatch.setattr(fast_module, "INLINE_MAX_SAMPLES", inline_max)
    monkeypatch.setattr(fast_module, "GEN_CHUNK", 4)  # exercise the chunked attention merge
    monkeypatch.setattr(fast_module, "INITIAL_CAPACITY", 3)  # and the cache growth
    monkeypatch.setattr(fast_module, "ATTENTION_BLOCK", 2)  # and attention in blocks of rows
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    got = by_key(fast(tiny, batch_size).sample(requests((0,)), params))
    for key, prompt in PROMPTS.items():
        tokens = plain_greedy(tiny, prompt, params)
        want = finish_completion(tiny.tokenizer, key, 0, tokens, len(tokens), [], params)
        assert got[(key, 0)].text == want.text
        assert got[(key, 0)].num_tokens == want.num_tokens == 24


def test_attention_blocks_gaps_and_moved_rows_leave_every_rows_logits(tiny, monkeypatch):
    """A decode step mid-run: rows at different lengths, finished rows leaving gaps, rows of a prompt no longer
    adjacent. Attention in blocks of 2 rows gives the one-block step's logits, and so does the step after the
    live rows are moved to the front."""
    params = SamplingParams(temperature=1.0, max_new_tokens=40, seed=0)
    sampler = fast(tiny, batch_size=6)
    sampler._w = fast_module._Weights(tiny.model, torch.float32, sampler.matmul_kernel, 6)
    with torch.inference_mode():
        run = fast_module._Run(sampler, [SampleRequest(k, p, (0, 1, 2)) for k, p in PROMPTS.items()], params)
        run._fill(run._free_rows(6))
        assert run._live() == list(range(6))
        generated = torch.tensor([30, 12, 25, 3, 17, 0])  # keys already in the rows' caches (random: any values do)
        assert run.capacity > 30
        for cache in (*run.kcache, *run.vcache):
            cache.normal_()
        run.t[:6], run.pos[:6] = generated, run.pos[:6] + generated
        run._release(1)
        run._release(3)
        live = run._live()
        steps = {}
        for block in (1000, 2, 1):
            monkeypatch.setattr(fast_module, "ATTENTION_BLOCK", block)
            steps[block] = run._step(live)
        moved = run._compact(live)
        assert moved == [0, 1, 2, 3] and run.t[:4].tolist() == [30, 25, 17, 0] and not run.t[4:].any()
        monkeypatch.setattr(fast_module, "ATTENTION_BLOCK", 2)
        after = run._step(moved)
    one = steps[1000]
    assert one.shape == (4, tiny.model.config.vocab_size)
    for logits in (steps[2], steps[1], after):
        assert torch.allclose(logits, one, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(one[0], one[1], atol=1e-2)  # rows really differ (their own keys count)


def test_greedy_prompts_are_prefilled_together_with_plain_generates_tokens(tiny):
    """Prompts decoded one row each (greedy evaluation) share one padded prefill: prompts of different lengths
    still give plain generate's tokens, and a batch stays within max_batch_tokens."""
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    sampler = fast(tiny, batch_size=2)
    got = by_key(sampler.sample(requests((0,)), params))
    assert sampler.stats.batched_prompts == len(PROMPTS)
    for key, prompt in PROMPTS.items():
        tokens = plain_greedy(tiny, prompt, params)
        assert got[(key, 0)].text == finish_completion(tiny.tokenizer, key, 0, tokens, len(tokens), [], params).text
    longest = max(sampler.count_tokens(p) for p in PROMPTS.values())
    narrow = fast(tiny, batch_size=2, max_batch_tokens=longest)  # room for the longest prompt alone
    assert by_key(narrow.sample(requests((0,)), params)) == got
    assert narrow.stats.batched_prompts < len(PROMPTS)


def test_greedy_copies_one_decode_to_every_index(tiny):
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    for sampler in (fast(tiny), ref(tiny)):
        out = list(sampler.sample([SampleRequest("a", PROMPTS["short"], (3, 5, 9))], params))
        assert sorted(c.index for c in out) == [3, 5, 9]
        assert len({c.text for c in out}) == 1


# ---- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=1),
        SamplingParams(temperature=0.7, top_k=50, max_new_tokens=20, seed=2),
        SamplingParams(temperature=0.6, top_p=0.95, top_k=100, max_new_tokens=20, stop=("e",), seed=3),
    ],
)
@pytest.mark.parametrize("inline_max", [0, 3])  # every prompt shared by its 3 rows, or copied into each row
def test_fast_draws_the_same_samples_as_reference(exact, params, inline_max, monkeypatch):
    """Same per-sample generator, same warper semantics: not only the same distribution, the same samples
    (on logits both backends compute bit for bit: see `exact`)."""
    monkeypatch.setattr(fast_module, "INLINE_MAX_SAMPLES", inline_max)
    monkeypatch.setattr(fast_module, "GEN_CHUNK", 4)
    monkeypatch.setattr(fast_module, "INITIAL_CAPACITY", 5)
    a = by_key(fast(exact, batch_size=3).sample(requests(), params))
    b = by_key(ref(exact).sample(requests(), params))
    assert a.keys() == b.keys()
    same = sum(a[k] == b[k] for k in a)
    assert same == len(a), [(a[k], b[k]) for k in a if a[k] != b[k]]
    assert len({c.text for c in a.values()}) > len(a) // 2  # real draws, not one likely continuation


SHARED_PREAMBLE = "Review the user's question and the corresponding response using the additive 5-point scoring system. "


def test_a_prompt_sharing_the_previous_ones_preamble_prefills_only_the_rest(exact, tiny):
    """Prefix reuse: the shared preamble is taken from the previous prompt's cache, and the samples are the
    reference's (exact logits) and greedy is plain generate's (the random model)."""
    reqs = [SampleRequest(k, SHARED_PREAMBLE + p, (0, 1, 2)) for k, p in PROMPTS.items()]
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=5)
    sampler = fast(exact, batch_size=2)
    got = by_key(sampler.sample(reqs, params))
    assert sampler.stats.reused_prompt_tokens >= 2 * fast_module.MIN_REUSED_PREFIX
    assert got == by_key(ref(exact).sample(reqs, params))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    sampler = fast(tiny)
    out = by_key(sampler.sample([SampleRequest(k, SHARED_PREAMBLE + p, (0,)) for k, p in PROMPTS.items()], greedy))
    assert sampler.stats.reused_prompt_tokens > 0
    for key, prompt in PROMPTS.items():
        tokens = plain_greedy(tiny, SHARED_PREAMBLE + prompt, greedy)
        assert out[(key, 0)].text == finish_completion(tiny.tokenizer, key, 0, tokens, len(tokens), [], greedy).text


def test_same_sample_whatever_the_batch(exact):
    """(seed, key, index) alone decides a sample: batch size, neighbours and resume order do not matter
    (given logits that do not change with the batch shape: see `exact`)."""
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=16, stop=("a",), seed=7)
    whole = by_key(fast(exact, batch_size=16).sample(requests(range(6)), params))
    one = by_key(fast(exact, batch_size=1).sample(requests(range(6)), params))
    resumed = by_key(
        list(fast(exact, batch_size=4).sample(requests((4, 5, 0)), params))
        + list(fast(exact, batch_size=3).sample([SampleRequest("long", PROMPTS["long"], (1, 2, 3))], params))
        + list(fast(exact, batch_size=2).sample([SampleRequest(k, PROMPTS[k], (1, 2, 3)) for k in ("short", "tiny")], params))
    )
    assert whole == one == resumed
    other_seed = by_key(fast(exact).sample(requests(range(6)), SamplingParams(**{**params.as_dict(), "stop": ("a",), "seed": 8})))
    assert sum(whole[k].text != other_seed[k].text for k in whole) > len(whole) // 2


def test_first_token_frequencies_match_warped_distribution(tiny):
    """Chi-square: 3000 first tokens from the fast sampler and from plain generate(do_sample=True)
    against the exact temperature/top-k/top-p distribution computed with transformers' warpers."""
    from scipy.stats import chisquare

    params = SamplingParams(temperature=0.05, top_k=12, top_p=0.9, max_new_tokens=1, seed=11)
    prompt = PROMPTS["long"]
    ids = tiny.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = tiny.model(ids).logits[:, -1].float()
    scores = logits
    for w in warpers(params):
        scores = w(ids, scores)
    probs = torch.softmax(scores, -1)[0]
    support = probs.nonzero().squeeze(1).tolist()
    assert 3 <= len(support) <= 12  # a distribution with several outcomes to test

    n = 3000
    out = list(fast(tiny, batch_size=64).sample([SampleRequest("p", prompt, tuple(range(n)))], params))
    first = collections.Counter(tiny.tokenizer(c.text, add_special_tokens=False).input_ids[0] for c in out)

    torch.manual_seed(0)
    with torch.inference_mode():
        plain = tiny.model.generate(
            ids, do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            max_new_tokens=1, num_return_sequences=n, pad_token_id=tiny.tokenizer.pad_token_id,
        )
    plain_counts = collections.Counter(plain[:, -1].tolist())

    expected = np.array([probs[t].item() for t in support], dtype=np.float64)
    expected *= n / expected.sum()  # float32 probabilities sum to 1 only up to rounding, which chisquare checks
    for counts in (first, plain_counts):
        assert set(counts) <= set(support)
        observed = np.array([counts.get(t, 0) for t in support])
        assert chisquare(observed, expected).pvalue > 1e-3
    tv = 0.5 * sum(abs(first.get(t, 0) - plain_counts.get(t, 0)) for t in support) / n
    assert tv < 0.05


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.6, top_p=0.95),
        SamplingParams(temperature=1.0, top_p=0.5),
        SamplingParams(temperature=1.3, top_k=7),
        SamplingParams(temperature=0.8, top_k=40, top_p=0.7),
        SamplingParams(temperature=1.0),
    ],
)
def test_nucleus_keeps_what_transformers_warpers_keep(params, scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 500, generator=gen) * scale
    logits[3, 7] = 50.0  # a row where one token holds all the mass
    if params.top_p < 1.0:  # no kept set decided by rounding: every cumulative mass is clear of top_p
        tempered = torch.sort(logits.double() / params.temperature, descending=True).values
        if params.top_k:
            tempered = tempered.masked_fill(tempered < tempered[:, params.top_k - 1 : params.top_k], float("-inf"))
        above = torch.softmax(tempered, -1).cumsum(-1)
        assert (above - params.top_p).abs().min() > 1e-5
    for candidates in (4, 64):  # 4: most rows overflow into the full-sort fallback
        probs, ids = nucleus(logits, params, candidates=candidates)
        scores = logits.clone()
        for w in warpers(params):
            scores = w(None, scores)
        want = torch.softmax(scores, -1)
        for r in range(logits.shape[0]):
            kept = probs[r] > 0
            got_ids = set(ids[r][kept].tolist())
            assert got_ids == set(torch.isfinite(scores[r]).nonzero().squeeze(1).tolist())
            got_p = probs[r][kept] / probs[r][kept].sum()  # weights, normalised here
            assert torch.allclose(got_p, want[r][ids[r][kept]], atol=1e-6)
            assert torch.all(probs[r][kept][:-1] >= probs[r][kept][1:])  # descending: the draw's order


# ---- stop strings, EOS, bookkeeping -------------------------------------------------------------


def test_stop_strings_cut_and_counted(exact):
    params = SamplingParams(temperature=1.0, max_new_tokens=30, stop=("e", "Q"), seed=5)
    out = list(fast(exact, batch_size=3).sample(requests(range(8)), params))
    stopped = [c for c in out if c.finish_reason == "stop"]
    assert len(stopped) > len(out) // 2
    for c in out:
        assert "e" not in c.text and "Q" not in c.text
        assert 1 <= c.num_tokens <= 30
        assert c.finish_reason in ("stop", "length")
    # generate(stop_strings=...) stops the same samples at the same token (its count includes the
    # token that completed the stop string)
    want = by_key(ref(exact).sample(requests(range(8)), params))
    assert by_key(out) == want


def test_eos_ends_a_sample_and_is_not_in_the_text(tiny):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    tokens = plain_greedy(tiny, PROMPTS["long"], params)
    eos = tokens[4]  # pretend the 5th greedy token is an end-of-sequence token
    for sampler in (fast(tiny), ref(tiny)):
        sampler.eos_ids = [*sampler.eos_ids, eos]
        if isinstance(sampler, FastHFSampler):
            assert sampler._fallback is None
        (c,) = sampler.sample([SampleRequest("long", PROMPTS["long"], (0,))], params)
        first = tokens.index(eos)
        assert (c.finish_reason, c.num_tokens) == ("eos", first + 1)
        assert c.text == tiny.tokenizer.decode(tokens[:first], skip_special_tokens=True)


def test_no_sample_lost_or_duplicated(tiny):
    params = SamplingParams(temperature=1.0, max_new_tokens=25, stop=("a",), seed=9)
    reqs = [
        SampleRequest("short", PROMPTS["short"], (0, 3, 4, 10, 11)),
        SampleRequest("long", PROMPTS["long"], tuple(range(13))),
        SampleRequest("tiny", PROMPTS["tiny"], (7,)),
        SampleRequest("none", PROMPTS["tiny"], ()),
    ]
    for batch_size in (1, 3, 8, 64):
        out = list(fast(tiny, batch_size).sample(reqs, params))
        got = collections.Counter((c.key, c.index) for c in out)
        assert got == collections.Counter((r.key, i) for r in reqs for i in r.indices)
        assert len({c.num_tokens for c in out}) > 3  # sequences really finished at different lengths
        assert all(c.prompt_tokens == fast(tiny).count_tokens(PROMPTS[c.key]) for c in out)


def test_prompt_is_not_given_special_tokens_twice(tiny):
    s = fast(tiny)
    text = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    ids = tiny.tokenizer(text, add_special_tokens=False).input_ids
    assert s.count_tokens(text) == len(ids)
    assert ids.count(tiny.tokenizer.bos_token_id) == text.count(tiny.tokenizer.bos_token)


def test_unsupported_architecture_falls_back_to_generate(tiny):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, eos_token_id=tiny.tokenizer.eos_token_id, pad_token_id=tiny.tokenizer.pad_token_id)
    neox = copy.copy(tiny)
    neox.model = GPTNeoXForCausalLM(cfg).eval()
    s = fast(neox)
    assert s._fallback is not None and "gpt_neox" in s.unsupported
    assert s.numerics == {"matmul_dtype": "float32"}  # generate's arithmetic, not the decode step's
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    out = list(s.sample(requests((0, 1)), params))
    # the same computation in the same batch shapes, so the same bits: a random model's near-uniform
    # logits computed in other shapes may round a draw the other way
    assert by_key(out) == by_key(ref(neox, batch_size=s._fallback.batch_size).sample(requests((0, 1)), params))


# ---- threads ----------------------------------------------------------------------------------------


class _Machine:
    """A simulated 2-core machine: wall clock, busy CPU time of all processes, this process's CPU time."""

    def __init__(self, monkeypatch):
        from harness.sampling import threads

        self.wall = self.busy = self.own = 0.0
        self.others, self.ours = 0.0, 0.0  # cores' worth of work
        self.torch_threads = [2]
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "available_cpus", lambda: {0, 1})
        monkeypatch.setattr(threads, "_cpu_busy_seconds", lambda cpus: self.busy)
        monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: self.own)
        monkeypatch.setattr(threads, "clock", lambda: self.wall)
        monkeypatch.setattr(threads, "sleep", lambda s: self.advance(s, idle=True))
        monkeypatch.setattr(torch, "get_num_threads", lambda: self.torch_threads[-1])
        monkeypatch.setattr(torch, "set_num_threads", self.torch_threads.append)

    def advance(self, seconds, idle=False):
        ours = 0.0 if idle else self.ours
        self.wall += seconds
        self.busy += seconds * (self.others + ours)
        self.own += seconds * ours


def test_threads_follow_the_cores_others_leave_free(monkeypatch):
    from harness.sampling.threads import RECHECK_SECONDS, CoreShare

    m = _Machine(monkeypatch)
    share = CoreShare()
    assert share.start() == 2  # idle machine: a thread per core
    m.others, m.ours = 1.0, 1.0  # a CPU-bound process arrives; ours spin-wait on the other core
    m.advance(RECHECK_SECONDS / 2)
    share.tick()
    assert share.threads == 2  # not re-measured before the window ends
    m.advance(RECHECK_SECONDS + 0.01)
    share.tick()
    assert share.threads == 1 and m.torch_threads[-1] == 1
    m.others = 0.0  # it leaves
    m.advance(RECHECK_SECONDS + 0.01)
    share.tick()
    assert share.threads == 2 and m.torch_threads[-1] == 2
    m.others = 0.4  # light background work does not cost a core
    m.advance(RECHECK_SECONDS + 0.01)
    share.tick()
    assert share.threads == 2
    probed = m.wall
    m.others = 1.0
    share.start()  # the next `sample` call: no second probe, the window since the last measurement is too short
    assert m.wall == probed and share.threads == 2
    m.advance(RECHECK_SECONDS + 0.01)
    assert share.start() == 1


def test_threads_start_at_one_on_a_busy_machine_and_respect_explicit_counts(monkeypatch):
    from harness.sampling.threads import CoreShare

    m = _Machine(monkeypatch)
    m.others = 1.5
    assert CoreShare().start() == 1
    fixed = CoreShare(2)
    assert fixed.start() == 2  # backend.num_threads set: no measuring
    m.advance(10)
    fixed.tick()
    assert fixed.threads == 2 and m.torch_threads[-1] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    m.others = 0.0
    assert CoreShare().start() == 1  # never more than OMP_NUM_THREADS


# ---- vLLM (GPU): param translation without vllm, the sampler only where it is installed -------


def test_vllm_params_translation():
    from harness.sampling.vllm import vllm_params

    p = vllm_params(SamplingParams(temperature=0.6, top_p=0.95, top_k=0, max_new_tokens=300, stop=("Q:",), seed=3), "k", 4)
    assert p["temperature"] == 0.6 and p["top_p"] == 0.95 and p["top_k"] == -1 and p["max_tokens"] == 300
    assert p["stop"] == ["Q:"] and p["n"] == 1 and isinstance(p["seed"], int)
    assert p["seed"] != vllm_params(SamplingParams(seed=3), "k", 5)["seed"]
    g = vllm_params(SamplingParams(temperature=0.0, top_p=0.5, top_k=5), "k", 0)
    assert (g["temperature"], g["top_p"], g["top_k"], g["seed"]) == (0.0, 1.0, -1, None)


def test_vllm_missing_is_a_config_error(tiny):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="backend.name=vllm: vllm is not installed"):
            make_sampler(OmegaConf.create({"name": "vllm"}), tiny)
    else:
        pytest.skip("vllm is installed")


def test_vllm_samples():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    lm = load_model(OmegaConf.load(ROOT / "conf/model/smollm2_135m.yaml"))
    s = make_sampler(OmegaConf.create({"name": "vllm", "gpu_memory_utilization": 0.3}), lm)
    out = list(s.sample([SampleRequest("a", PROMPTS["short"], (0, 1))], SamplingParams(max_new_tokens=8)))
    assert sorted(c.index for c in out) == [0, 1]


# ---- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_fast_greedy_equals_plain_generate_on_smollm2():
    lm = load_model(OmegaConf.load(ROOT / "conf/model/smollm2_135m.yaml"))
    params = SamplingParams(temperature=0.0, max_new_tokens=40)
    prompts = {
        "chat": lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 times 7?"}], add_generation_prompt=True, tokenize=False),
        "plain": "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    }
    got = by_key(fast(lm, batch_size=2).sample([SampleRequest(k, p, (0,)) for k, p in prompts.items()], params))
    eos = lm.tokenizer.eos_token_id
    for key, prompt in prompts.items():
        tokens = plain_greedy(lm, prompt, params)
        want = finish_completion(lm.tokenizer, key, 0, tokens, 0, [eos], params)
        assert (got[(key, 0)].text, got[(key, 0)].num_tokens) == (want.text, want.num_tokens)


def test_sampling_leaves_torch_thread_count_as_it_found_it(tiny):
    """torch's thread count is process-wide: a count chosen for sampling (here fixed at 1) must not leak
    into what the process does next (training after a Grow, a judge pass...)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sampler = fast(tiny, num_threads=1)
        seen = []
        for c in sampler.sample(requests((0,)), SamplingParams(temperature=0.0, max_new_tokens=3)):
            seen.append(torch.get_num_threads())
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_training_rechecks_free_cores_every_step(monkeypatch):
    from harness.sampling import threads
    from harness.training.sft import train_on_free_cores

    ticks = []
    monkeypatch.setattr(threads.CoreShare, "start", lambda self: ticks.append("start") or 1)
    monkeypatch.setattr(threads.CoreShare, "tick", lambda self: ticks.append("tick"))

    class FakeTrainer:
        callbacks: list = []

        def add_callback(self, cb):
            self.callbacks.append(cb)

        def train(self):
            for _ in range(3):
                for cb in self.callbacks:
                    cb.on_step_begin(None, None, None)
            return "trained"

    assert train_on_free_cores(FakeTrainer()) == "trained"
    assert ticks == ["start", "tick", "tick", "tick"]


# ---- matmul_dtype: auto ----------------------------------------------------------------------


def test_auto_matmul_dtype_is_float32_without_native_bf16(tiny, monkeypatch):
    """No avx512_bf16/amx_bf16 flag: float32 without timing anything (the timer would fail the test)."""
    monkeypatch.setattr(fast_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "fma"}))
    monkeypatch.setattr(fast_module, "bf16_speedup", lambda *a, **k: pytest.fail("timed products on a CPU without bf16"))
    s = fast(tiny, matmul_dtype="auto")
    assert s.matmul_dtype == torch.float32
    assert s.numerics == {"matmul_dtype": "float32"}


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
@pytest.mark.parametrize(("speedup", "chosen"), [(1.6, "bfloat16"), (1.05, "float32"), (0.7, "float32")])
def test_auto_matmul_dtype_takes_bf16_only_when_clearly_faster(tiny, monkeypatch, flag, speedup, chosen):
    """With native bf16 the measured speedup decides, and `numerics` (the store key) names the resolved
    dtype, never "auto". The measurement is replaced by a fixed number: no timed assertion."""
    monkeypatch.setattr(fast_module, "cpu_flags", lambda: frozenset({"avx512f", flag}))
    monkeypatch.setattr(fast_module, "bf16_speedup", lambda *a, **k: speedup)
    s = fast(tiny, matmul_dtype="auto")
    assert s.numerics == {"matmul_dtype": chosen}
    out = list(s.sample(requests((0,)), SamplingParams(max_new_tokens=3)))
    assert sorted(c.key for c in out) == sorted(PROMPTS)


def test_bad_matmul_dtype_is_one_config_error(tiny):
    for bad in ("bf16", "float16", "AUTO"):
        with pytest.raises(ConfigError, match=r"^backend\.matmul_dtype: .*auto") as err:
            fast(tiny, matmul_dtype=bad)
        assert "\n" not in str(err.value)


def test_bf16_speedup_is_a_positive_ratio_and_cached():
    """The measurement itself (tiny shapes): a finite positive ratio, measured once per process and shapes."""
    fast_module.bf16_speedup.cache_clear()
    first = fast_module.bf16_speedup(16, 32, 1, rows=4, reps=1)
    assert 0 < first < float("inf")
    assert fast_module.bf16_speedup(16, 32, 1, rows=4, reps=1) == first
    assert fast_module.bf16_speedup.cache_info().hits == 1


# ---- matmul_kernel: oneDNN-packed or BLAS products ------------------------------------------------------

needs_onednn = pytest.mark.skipif(not fast_module.onednn_available(), reason="this torch build has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_and_blas_products_agree_at_every_row_count(dtype):
    """A weight packed for 8 rows still multiplies 1, 3 or 11 rows right (the tail of a run, greedy evaluation);
    both kernels round only (float32: ~1e-6 relative; bf16: the inputs' own rounding)."""
    if not fast_module.onednn_available(dtype):
        pytest.skip(f"this CPU cannot pack {dtype} weights for oneDNN (AVX2 only: no bf16 packing)")
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=gen)
    blas, onednn = (fast_module._Product(weight, dtype, kernel, rows=8) for kernel in ("blas", "onednn"))
    assert onednn.packed is not None and blas.packed is None
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for rows in (1, 3, 8, 11):
        x = torch.randn(rows, 40, generator=gen)
        a, b = blas(x), onednn(x)
        assert a.dtype == b.dtype == torch.float32 and b.shape == (rows, 24)
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
        torch.testing.assert_close(a, x @ weight.T, rtol=tol, atol=tol * 10)


@needs_onednn
def test_either_kernel_draws_the_same_samples_and_keeps_the_store_key(exact):
    """On the exact model (logits exact in float32 whatever the kernel) both kernels draw the same samples; the
    kernel is not in `numerics`, so samples drawn with either are one store entry."""
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=10, seed=5)
    drawn = {}
    for kernel in ("blas", "onednn"):
        s = fast(exact, batch_size=4, matmul_kernel=kernel)
        assert s.kernels == kernel and s.numerics == {"matmul_dtype": "float32"}
        drawn[kernel] = by_key(s.sample(requests(range(3)), params))
    assert drawn["blas"] == drawn["onednn"]


def test_auto_kernel_is_onednn_where_torch_has_it_else_blas(tiny, monkeypatch):
    assert fast(tiny).kernels == ("onednn" if fast_module.onednn_available() else "blas")
    monkeypatch.setattr(fast_module, "onednn_available", lambda dtype=torch.float32: False)
    s = fast(tiny, matmul_kernel="auto")
    assert s.kernels == "blas"
    assert len(list(s.sample(requests((0,)), SamplingParams(max_new_tokens=3)))) == len(PROMPTS)
    with pytest.raises(ConfigError, match=r"^backend\.matmul_kernel: 'onednn' but this torch build"):
        fast(tiny, matmul_kernel="onednn")


def test_bf16_products_fall_back_to_blas_where_onednn_cannot_pack_bf16(tiny, monkeypatch):
    """An AVX2-only CPU has oneDNN for float32 but none for bfloat16 (torch raises when packing): `auto` takes BLAS
    for bf16 products there, and an explicit `onednn` is one config error naming the dtype."""
    monkeypatch.setattr(fast_module, "onednn_available", lambda dtype=torch.float32: dtype == torch.float32)
    assert fast(tiny).kernels == "onednn"
    s = fast(tiny, matmul_dtype="bfloat16")
    assert s.kernels == "blas" and s.numerics == {"matmul_dtype": "bfloat16"}
    assert len(list(s.sample(requests((0,)), SamplingParams(max_new_tokens=3)))) == len(PROMPTS)
    with pytest.raises(ConfigError, match=r"^backend\.matmul_kernel: 'onednn' .* bfloat16 products"):
        fast(tiny, matmul_dtype="bfloat16", matmul_kernel="onednn")


def test_bad_matmul_kernel_is_one_config_error(tiny):
    for bad in ("mkl", "oneDNN", ""):
        with pytest.raises(ConfigError, match=r"^backend\.matmul_kernel: .*auto, onednn, blas") as err:
            fast(tiny, matmul_kernel=bad)
        assert "\n" not in str(err.value)


# ---- counter-based streams (backend.rng=counter, harness/sampling/counter_rng.py) -------------------------


def test_counter_stream_samples_are_batch_independent_and_shared_by_both_backends(exact):
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=3)
    reqs = requests(range(4))
    whole = by_key(fast(exact, batch_size=8, rng="counter").sample(reqs, params))
    one = by_key(fast(exact, batch_size=1, rng="counter").sample(reqs, params))
    reference = by_key(make_sampler(OmegaConf.create({"name": "hf_generate", "rng": "counter"}), exact).sample(reqs, params))
    assert whole == one == reference
    generator = by_key(fast(exact, batch_size=8).sample(reqs, params))
    assert sum(generator[k].text != whole[k].text for k in whole) > len(whole) // 2  # another stream: other samples


def test_the_store_keys_on_a_counter_stream_and_not_on_the_default(tiny):
    counter = {"matmul_dtype": "float32", "rng": "counter"}
    assert fast(tiny, rng="counter").numerics == counter
    assert make_sampler(OmegaConf.create({"name": "hf_generate", "rng": "counter"}), tiny).numerics == counter
    assert fast(tiny, rng="generator").numerics == {"matmul_dtype": "float32"}  # the stored samples' keys unchanged


def test_unknown_rng_is_one_config_error(tiny):
    with pytest.raises(ConfigError, match="backend.rng"):
        fast(tiny, rng="mersenne")
