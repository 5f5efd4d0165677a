"""The iterated-policy loop (harness.pipeline): a toy 2-iteration recipe (sample -> train -> evaluate) resumes
after a simulated kill without redrawing a sample or retraining a finished checkpoint; a changed config is
refused; samples of the base model and of a checkpoint never share a store entry (tiny random model)."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import harness.pipeline.iterated as iterated
from harness.cli import CONF_DIR
from harness.data.problems import Problem, ProblemSet
from harness.errors import ConfigError
from harness.pipeline import BASE, Policy, PolicyLoop, StageFailure, derived_seed, sample_info, setup_experiment
from harness.pipeline.experiment import prompt_from_cfg
from harness.reporting.run import start_run
from harness.sampling import factory
from harness.sampling.base import SamplingParams
from harness.training import TrainingData, completion_records


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The tiny random model saved as a folder: loading it takes well under a second (its GGUF tokenizer does not)."""
    from harness.models.loading import load_model

    folder = tmp_path_factory.mktemp("tiny_base")
    model = load_model(OmegaConf.load(CONF_DIR / "model" / "tiny_random.yaml"))
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def _compose(tmp_path, tiny_base, overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="rest", overrides=[
            "model=tiny_random", "~model.random_init", f"+model.path={tiny_base}", f"store.root={tmp_path / 'store'}",
            "progress=false", "grader.workers=1", "training.epochs=1", "training.measure_loss=false", *overrides])


def _problems(name, n, offset=0):
    problems = [Problem(id=f"{name}{i}", question=f"What is {i + offset} + 1?", answer=str(i + offset + 1),
                        solution=f"{i + offset} + 1 = {i + offset + 1}", dataset="gsm8k") for i in range(n)]
    return ProblemSet(name=name, split="test", problems=problems, source=f"toy:{name}", sha256=f"toy-{name}-{n}")


TRAIN, TEST = _problems("train", 3), _problems("test", 2, offset=10)
PARAMS = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=5, stop=(), seed=0)
KEYS = ("model", "sampling", "training", "prompt")


@pytest.fixture
def counting(monkeypatch):
    """Every sample a sampler draws (with the identity of the weights that drew it) and every training call."""
    drawn, trained = [], []
    real_make, real_sft = factory.make_sampler, iterated.train_sft

    def make(backend, model):
        sampler = real_make(backend, model)
        real_sample = sampler.sample

        def sample(requests, params):
            for c in real_sample(requests, params):
                drawn.append((model.identity, c.key, c.index))
                yield c
        sampler.sample = sample
        return sampler

    def sft(*args, **kwargs):
        trained.append(args[2].sha256)
        return real_sft(*args, **kwargs)

    monkeypatch.setattr(factory, "make_sampler", make)
    monkeypatch.setattr(iterated, "train_sft", sft)
    return drawn, trained


def toy_recipe(loop: PolicyLoop, spec) -> dict:
    """for i in 1..2: D_i <- samples of policy_{i-1}; policy_i <- SFT(policy_{i-1}, D_i); evaluate policy_i."""
    exp, policy, evals = loop.exp, BASE, {}
    for i in (1, 2):
        def grow():
            graded = exp.sample_and_grade(spec, 2, PARAMS, policy=policy, problem_set=TRAIN, desc=f"grow {i}")
            return {**sample_info(graded), "policy": policy.as_dict()}

        def improve():
            graded = exp.sample_and_grade(spec, 2, PARAMS, policy=policy, problem_set=TRAIN, desc=f"grow {i} (read)")
            data = TrainingData(completion_records(graded, exp.prompts(spec, TRAIN.problems, policy)))
            return loop.train(policy, data, tag=f"iter{i}")

        def evaluate():
            graded = exp.sample_and_grade(spec, 1, PARAMS, policy=policy, problem_set=TEST, desc=f"eval {i}")
            return sample_info(graded)

        loop.stage(f"grow/{i}", grow)
        policy = Policy.of(loop.stage(f"improve/{i}", improve)["policy"])
        evals[i] = loop.stage(f"eval/{i}", evaluate)
    loop.close()
    return evals


def _loop(cfg, run_dir, fail_at=None):
    exp = setup_experiment(cfg, start_run(cfg, "toy", run_dir), problems=TEST, load=False)
    return PolicyLoop(exp, KEYS, fail_at=fail_at)


def test_killed_loop_resumes_without_redrawing_or_retraining(tmp_path, tiny_base, counting, monkeypatch):
    drawn, trained = counting
    monkeypatch.chdir(tmp_path)
    cfg = _compose(tmp_path, tiny_base)
    spec = prompt_from_cfg(cfg.prompt)
    run_dir = Path("results/toy/run")

    with pytest.raises(StageFailure):
        toy_recipe(_loop(cfg, run_dir, fail_at="eval/2"), spec)
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert [k for k in ledger if k != "config"] == ["grow/1", "improve/1", "eval/1", "grow/2", "improve/2"]
    assert len(trained) == 2 and len(drawn) == 2 * (3 * 2) + 2
    first_ckpt = Path(ledger["improve/1"]["checkpoint"])
    assert (first_ckpt / "training.json").is_file() and not first_ckpt.is_absolute()
    stamp = (first_ckpt / "model.safetensors").stat().st_mtime_ns

    # A kill after improve/2's checkpoint was saved but before the ledger recorded the stage: the stage is
    # redone from the store and the finished checkpoint, so nothing is drawn or trained again.
    del ledger["improve/2"]
    (run_dir / "ledger.json").write_text(json.dumps(ledger))
    [exported] = (run_dir / "conf" / "model").glob("*iter2.yaml")  # the checkpoint's model config, for reuse
    exported.unlink()  # as in a run dir whose checkpoint was copied in: the reused checkpoint exports it again
    drawn.clear()
    evals = toy_recipe(_loop(cfg, run_dir), spec)
    assert len(trained) == 2
    assert Path(OmegaConf.load(exported).path).name == "iter2"
    assert (first_ckpt / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(drawn) == 2  # only eval/2: 2 test problems x 1 sample, by the second checkpoint's weights
    second = Policy.checkpoint(json.loads((run_dir / "ledger.json").read_text())["improve/2"]["checkpoint"])
    assert {d[0] for d in drawn} == {evals[2]["model"]} and evals[2]["model"] != evals[1]["model"]
    from harness.training import load_checkpoint

    assert load_checkpoint(second.path).load().identity == evals[2]["model"]
    assert load_checkpoint(second.path).meta["init"]["kind"] == "checkpoint"  # iteration 2 continued from 1

    from harness.reporting.paths import absolute_paths_in

    records = [(run_dir / "ledger.json").read_text(), (Path(second.path) / "training.json").read_text()]
    assert not absolute_paths_in(records) and not any(str(tmp_path) in text for text in records)

    # The finished run again: every stage from the ledger, nothing drawn or trained.
    drawn.clear()
    assert toy_recipe(_loop(cfg, run_dir), spec) == evals and not drawn and len(trained) == 2


def test_resume_with_a_changed_config_is_refused(tmp_path, tiny_base):
    cfg = _compose(tmp_path, tiny_base)
    _loop(cfg, tmp_path / "run")
    _loop(cfg, tmp_path / "run")  # the same config resumes
    changed = _compose(tmp_path, tiny_base, ["training.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"run_name=.*different config"):
        _loop(changed, tmp_path / "run")
    fail_only = ["rest.fail_at=eval/1"]  # a volatile key leaves the fingerprint alone
    exp = setup_experiment(_compose(tmp_path, tiny_base, fail_only), start_run(cfg, "toy", tmp_path / "r2"), TEST, load=False)
    PolicyLoop(exp, ("model", "rest"), volatile=("rest.fail_at",))
    exp = setup_experiment(cfg, start_run(cfg, "toy", tmp_path / "r2"), TEST, load=False)
    PolicyLoop(exp, ("model", "rest"), volatile=("rest.fail_at",))


def test_base_and_checkpoint_samples_never_share_an_entry(tmp_path, tiny_base, counting, monkeypatch):
    drawn, _ = counting
    monkeypatch.chdir(tmp_path)
    cfg = _compose(tmp_path, tiny_base)
    spec = prompt_from_cfg(cfg.prompt)
    loop = _loop(cfg, Path("run"))
    exp = loop.exp
    base = exp.sample_and_grade(spec, 2, PARAMS, problem_set=TRAIN, desc="base")
    base_identity = exp.model.identity
    data = TrainingData(completion_records(base, exp.prompts(spec, TRAIN.problems)))
    ckpt = Policy.of(loop.train(BASE, data, tag="c1")["policy"])
    assert exp._loaded is None  # the trained model was handed over, not kept beside another

    drawn.clear()
    tuned = exp.sample_and_grade(spec, 2, PARAMS, problem_set=TRAIN, policy=ckpt, desc="ckpt")
    assert len(drawn) == 3 * 2 and {d[0] for d in drawn} == {exp.load(ckpt).identity} != {base_identity}
    base_entry, tuned_entry = base.attrs["entry"], tuned.attrs["entry"]
    assert base_entry.key.model == base_identity and tuned_entry.key.model == exp.load(ckpt).identity
    assert base_entry.dir != tuned_entry.dir
    assert exp.sample_and_grade(spec, 2, PARAMS, problem_set=TRAIN, desc="base again").attrs["drawn_now"] == 0
    with pytest.raises(ConfigError, match="belongs to"):  # drawing into another policy's entry is refused
        exp.draw(exp.entry(spec, PARAMS, problem_set=TRAIN), exp.prompts(spec, TRAIN.problems), 2, PARAMS, policy=ckpt)


def test_a_variant_is_its_own_store_entry(tmp_path, tiny_base):
    cfg = _compose(tmp_path, tiny_base)
    spec = prompt_from_cfg(cfg.prompt)
    exp = setup_experiment(cfg, start_run(cfg, "toy", tmp_path / "run"), problems=TEST)
    plain = exp.entry(spec, PARAMS)
    steps = exp.entry(spec, PARAMS, variant={"separator": "\n\n"})
    other = exp.entry(spec, PARAMS, variant={"separator": "\n"})
    assert len({plain.dir, steps.dir, other.dir}) == 3
    assert steps.key.prompt == f"{spec.name}+separator" and steps.dir == exp.entry(spec, PARAMS, variant={"separator": "\n\n"}).dir
    assert exp.entry(spec, PARAMS, problem_set=TRAIN).dir != plain.dir


def test_derived_seed_separates_parts_and_repeats():
    seeds = {derived_seed(0, "improve", i, j) for i in range(1, 4) for j in range(1, 4)}
    assert len(seeds) == 9 and all(0 <= s < 2**31 for s in seeds)
    assert derived_seed(0, "improve", 1, 2) == derived_seed(0, "improve", 1, 2) != derived_seed(1, "improve", 1, 2)
    assert derived_seed(0, "a", 12) != derived_seed(0, "a1", 2)  # parts are not concatenated


def test_policy_references():
    assert Policy.of(None) == BASE and Policy.of({"kind": "base"}) == BASE
    ref = Policy.checkpoint("results/x/checkpoints/iter1")
    assert Policy.of(ref.as_dict()) == ref and ref.as_dict() == {"kind": "checkpoint", "path": "results/x/checkpoints/iter1"}
    with pytest.raises(ConfigError, match="policy"):
        Policy("checkpoint")
