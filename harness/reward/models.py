"""Reward models that score a solution step by step (PRM) or as a whole (ORM), behind one interface.

A solution is split into steps at a separator (a blank line by default). `score_steps` returns one
score in [0, 1] per step (an ORM returns a single score for the whole solution), and
`ScoredSolution.score(aggregation)` reduces them by last / min / prod / mean, as the paper's
`math_evaluate.py` does. Each scored solution also reports how many tokens the reward model read
for the question and for each step, which is what harness.selection.flops charges for it.

Implementations, chosen by `kind` in a conf/reward_model/*.yaml:
- `causal_lm_prm`: a hub or local causal LM read at a step tag, e.g. Math-Shepherd
  (peiyi9979/math-shepherd-mistral-7b-prm: P('+') vs P('-') at each ' ки') or the paper's
  tkitsers/Llemma-reward-model (a logit read at the step-tag token);
- `sequence_classifier`: an ORM with a scalar head (AutoModelForSequenceClassification, num_labels=1,
  e.g. one trained with TRL's RewardTrainer), read at the last token;
- `embedded`: a value head trained here (harness.reward.training) on the hidden states of the
  embedded LM's first layers, saved to and reloaded from a folder with its training provenance.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from harness.errors import ConfigError
from harness.reporting.paths import portable, portable_tree

AGGREGATIONS = ("last", "min", "prod", "mean")
# Config keys that cannot change a score (batching, placement, naming, where the files are): not identity.
_NOT_IDENTITY = ("name", "path", "batch_size", "device_map", "num_parameters", "aggregation", "training")
LEVELS = ("prm", "orm")
KINDS = ("causal_lm_prm", "sequence_classifier", "embedded")
DEFAULT_SEPARATOR = "\n\n"


def split_steps(text: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """The non-empty steps of a solution (the whole text is one step when it has no separator)."""
    steps = [s.strip() for s in text.split(separator)] if separator else [text.strip()]
    return [s for s in steps if s]


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One score for a solution from its step scores; 0 for a solution with no scored step (as the paper)."""
    if how not in AGGREGATIONS:
        raise ConfigError(f"reward_model.aggregation: '{how}' is not one of {', '.join(AGGREGATIONS)}")
    if len(step_scores) == 0:
        return 0.0
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "prod":
        return float(np.prod(step_scores))
    return float(np.mean(step_scores))


@dataclass
class ScoredSolution:
    step_scores: list[float]  # one per step (PRM) or a single one (ORM)
    question_tokens: int  # reward-model tokens before the first step (shared by a problem's solutions)
    step_tokens: list[int]  # reward-model tokens of each step (len == number of steps)

    def score(self, how: str = "last") -> float:
        return aggregate(self.step_scores, how)

    @property
    def solution_tokens(self) -> int:
        return int(sum(self.step_tokens))


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class RewardModelConfig:
    """A conf/reward_model/*.yaml. Keys a kind does not use are ignored by it."""

    name: str = "reward_model"
    kind: str = "embedded"
    level: str = "prm"  # prm: a score per step | orm: one score per solution
    aggregation: str = "last"  # how step scores become one solution score: last | min | prod | mean
    step_separator: str = DEFAULT_SEPARATOR  # where the policy's solutions are split into steps
    # --- hub / local transformers models (causal_lm_prm, sequence_classifier)
    hub_id: Optional[str] = None
    path: Optional[str] = None  # a local folder (save_pretrained), or for `embedded` a folder written by save()
    revision: Optional[str] = None
    dtype: str = "float32"
    device_map: Optional[str] = None  # e.g. "auto" to spread a large reward model over the GPUs (accelerate)
    num_parameters: Optional[int] = None  # for FLOPs when the weights are not loaded here (paper scale)
    input_template: str = "{question} "  # text before the first step; {question} is the raw problem
    use_chat_template: bool = False  # render the question as a user turn with the model's chat template
    step_tag: str = " ки"  # appended to every step (Math-Shepherd's tag); scores are read at its last token
    step_join: str = "\n"  # between a step tag and the next step
    readout: str = "good_bad"  # good_bad: P(good)/(P(good)+P(bad)) | token_logit: sigmoid(logit[score_token_id])
    good_token: str = "+"
    bad_token: str = "-"
    score_token_id: Optional[int] = None
    max_length: int = 2048
    batch_size: int = 8
    # --- embedded (trained here, see harness.reward.training)
    backbone: Optional[Any] = None  # a conf/model config (name or node) whose first layers give features
    layers: int = 8  # how many of the backbone's transformer layers to run
    # per step: last (the state at the step's last token), mean (over the step's tokens), logprob (the full backbone's
    # log-probabilities of the solution's own tokens: the minimum over the solution so far, the step's minimum and
    # mean; needs `layers` = the backbone's depth)
    features: list = field(default_factory=lambda: ["last"])
    training: Optional[Any] = None  # harness.reward.training.TrainingConfig keys


def _plain_container(obj: Any) -> Any:
    """OmegaConf nodes inside a config (e.g. `backbone`) as plain dicts and lists, for hashing and JSON."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain_container(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_container(v) for v in obj]
    return obj


FEATURE_KINDS = ("last", "mean", "logprob")  # RewardModelConfig.features of an embedded head


def reward_model_config(cfg: Any) -> RewardModelConfig:
    """A typed config from a composed `cfg.reward_model` node, a conf/reward_model name or a dict."""
    from omegaconf import DictConfig, OmegaConf

    from harness.config import validate
    from harness.data.problems import PROJECT_ROOT

    if isinstance(cfg, RewardModelConfig):
        return cfg
    if isinstance(cfg, str):
        path = PROJECT_ROOT / "conf" / "reward_model" / f"{cfg}.yaml"
        if not path.is_file():
            raise ConfigError(f"reward_model '{cfg}': no config {path}")
        cfg = OmegaConf.load(path)
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    rm = validate(OmegaConf.create({"reward_model": node}), RewardModelConfig, "reward_model")
    where = f"reward_model '{rm.name}'"
    if rm.kind not in KINDS:
        raise ConfigError(f"{where}: kind '{rm.kind}' is not one of {', '.join(KINDS)}")
    if rm.level not in LEVELS:
        raise ConfigError(f"{where}: level '{rm.level}' is not one of {', '.join(LEVELS)}")
    aggregate([], rm.aggregation)  # validates the name
    if rm.readout not in ("good_bad", "token_logit"):
        raise ConfigError(f"{where}: readout '{rm.readout}' is not one of good_bad, token_logit")
    if rm.kind == "causal_lm_prm" and rm.readout == "token_logit" and rm.score_token_id is None:
        raise ConfigError(f"{where}: readout token_logit needs reward_model.score_token_id")
    unknown = [kind for kind in rm.features if kind not in FEATURE_KINDS]
    if unknown:
        raise ConfigError(f"{where}: reward_model.features: '{unknown[0]}' is not one of {', '.join(FEATURE_KINDS)}")
    return rm


# ---------------------------------------------------------------------------------------------
# the interface


class RewardModel(ABC):
    config: RewardModelConfig
    flops_parameters: int  # N in the 2·N FLOPs per token charged for this model

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def level(self) -> str:
        return self.config.level

    @property
    @abstractmethod
    def identity(self) -> str:
        """A digest of everything that determines the scores (weights and scoring config): cached scores
        are keyed by it, so a retrained or reconfigured model never reuses another's scores."""

    def _config_sha256(self) -> str:
        from harness.models.identity import json_sha256

        cfg = {k: v for k, v in asdict(self.config).items() if k not in _NOT_IDENTITY}
        return json_sha256(_plain_container(cfg))

    @abstractmethod
    def score_steps(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[ScoredSolution]:
        """Score each (question, steps) pair; the i-th result has one score per step (PRM)."""

    def split(self, text: str) -> list[str]:
        return split_steps(text, self.config.step_separator)

    def score_solutions(self, questions: Sequence[str], texts: Sequence[str]) -> list[ScoredSolution]:
        return self.score_steps(questions, [self.split(t) for t in texts])

    def score(self, questions: Sequence[str], texts: Sequence[str], aggregation: str | None = None) -> list[float]:
        how = aggregation or self.config.aggregation
        return [s.score(how) for s in self.score_solutions(questions, texts)]


# ---------------------------------------------------------------------------------------------
# transformers models from the hub or a local folder


def _pretrained_source(rm: RewardModelConfig) -> tuple[str, dict]:
    where = rm.path or rm.hub_id
    if not where:
        raise ConfigError(f"reward_model '{rm.name}': set reward_model.hub_id or reward_model.path")
    kwargs: dict = {"revision": rm.revision} if rm.revision else {}
    return str(Path(where).expanduser()) if rm.path else where, kwargs


class _TransformersRM(RewardModel):
    auto_class = "AutoModelForCausalLM"

    def __init__(self, rm: RewardModelConfig, model: Any = None, tokenizer: Any = None):
        import torch
        import transformers

        self.config = rm
        if model is None or tokenizer is None:
            where, kwargs = _pretrained_source(rm)
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
                extra = {"num_labels": 1} if self.auto_class == "AutoModelForSequenceClassification" else {}
                if rm.device_map:
                    extra["device_map"] = rm.device_map
                model = getattr(transformers, self.auto_class).from_pretrained(
                    where, dtype=getattr(torch, rm.dtype), **extra, **kwargs
                )
            except OSError as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ConfigError(f"reward_model '{rm.name}': cannot load '{where}': {first}") from err
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.flops_parameters = int(rm.num_parameters or sum(p.numel() for p in model.parameters()))
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """A hub model: its id and commit (hashing billions of parameters per run would cost minutes);
        a local folder or an in-memory model: the sha256 of its loaded tensors. Plus the scoring config."""
        if self._identity is None:
            from harness.models.identity import hub_commit, tensors_sha256

            rm = self.config
            if rm.hub_id and not rm.path:
                try:
                    commit = hub_commit(rm.hub_id, rm.revision, getattr(self.model, "config", None))
                except ConfigError:  # not resolvable offline: the revision as configured
                    commit = rm.revision or "main"
                weights = f"hub:{rm.hub_id}@{commit}"
            else:
                weights = f"sha256:{tensors_sha256(self.model)}"
            self._identity = f"{weights}+config:{self._config_sha256()[:16]}"
        return self._identity

    def _prefix(self, question: str) -> str:
        if self.config.use_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
        from harness.data.prompts import fill

        return fill(self.config.input_template, {"question": question}, f"reward_model '{self.name}'.input_template")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None and getattr(self.tokenizer, "add_bos_token", True) else []


class CausalLMPRM(_TransformersRM):
    """A PRM that is a causal LM: its scores are read at a tag token appended to every step."""

    auto_class = "AutoModelForCausalLM"

    def __init__(self, rm: RewardModelConfig, model: Any = None, tokenizer: Any = None):
        super().__init__(rm, model, tokenizer)
        tag_ids = self._encode(rm.step_tag)
        if not tag_ids:
            raise ConfigError(f"reward_model '{rm.name}': step_tag {rm.step_tag!r} encodes to no token")
        self.tag_id = tag_ids[-1]
        if rm.readout == "good_bad":
            good, bad = self._encode(rm.good_token), self._encode(rm.bad_token)
            if len(good) != 1 or len(bad) != 1:
                raise ConfigError(f"reward_model '{rm.name}': good_token/bad_token must each be one token")
            self.candidates = [good[0], bad[0]]

    def score_steps(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[ScoredSolution]:
        import torch

        rm = self.config
        encoded = []
        for q, ss in zip(questions, steps):
            ids = self._bos() + self._encode(self._prefix(q))
            q_len, ends = len(ids), []
            for i, s in enumerate(ss):
                # Pieces are tokenized separately so each tag's position is known exactly.
                ids += self._encode(s + rm.step_tag) + (self._encode(rm.step_join) if i < len(ss) - 1 else [])
                ends.append(len(ids))
            encoded.append((ids[: rm.max_length], q_len, ends))
        out: list[ScoredSolution] = []
        for start in range(0, len(encoded), rm.batch_size):
            batch = encoded[start : start + rm.batch_size]
            width = max(len(ids) for ids, _, _ in batch)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _ in batch])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in batch])
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.model.device),
                                    attention_mask=mask.to(self.model.device)).logits.float().cpu()
            for row, (ids, q_len, ends) in enumerate(batch):
                tag_pos = [i for i, t in enumerate(ids) if t == self.tag_id and i >= q_len]
                if rm.readout == "good_bad":
                    probs = logits[row][:, self.candidates].softmax(-1)[:, 0]
                else:
                    probs = torch.sigmoid(logits[row][:, rm.score_token_id])
                scores = [float(probs[p]) for p in tag_pos[: len(ends)]]  # steps cut by max_length get none
                bounds = [q_len] + ends
                out.append(ScoredSolution(scores, q_len, [bounds[i + 1] - bounds[i] for i in range(len(ends))]))
        return out


class SequenceClassifierORM(_TransformersRM):
    """An outcome reward model with a scalar head, read at the last token (sigmoid of the logit)."""

    auto_class = "AutoModelForSequenceClassification"

    def score_steps(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[ScoredSolution]:
        import torch

        rm = self.config
        out = []
        for start in range(0, len(questions), rm.batch_size):
            qs, sols = questions[start : start + rm.batch_size], steps[start : start + rm.batch_size]
            prefixes = [self._bos() + self._encode(self._prefix(q)) for q in qs]
            bodies = [self._encode(rm.step_separator.join(ss)) for ss in sols]
            rows = [(p + b)[: rm.max_length] for p, b in zip(prefixes, bodies)]
            width = max(len(r) for r in rows)
            pad = self.tokenizer.pad_token_id
            self.model.config.pad_token_id = pad
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left pad: last token is real
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.model.device),
                                    attention_mask=mask.to(self.model.device)).logits.float().cpu()[:, 0]
            for p, b, ss, value in zip(prefixes, bodies, sols, torch.sigmoid(logits).tolist()):
                out.append(ScoredSolution([float(value)] if ss else [], len(p), [len(b)] if ss else []))
        return out


# ---------------------------------------------------------------------------------------------
# the embedded value head


class TruncatedBackbone:
    """The first `layers` transformer layers of a causal LM (sharing its weights), for features.

    Built by copying the decoder's children onto a meta-device shell, so no weights are duplicated.
    """

    def __init__(self, loaded: Any, layers: int):
        import copy

        import torch

        model = loaded.model
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        total = len(base.layers)
        if not 1 <= layers <= total:
            raise ConfigError(f"reward_model.layers: {layers} is outside 1..{total} for '{loaded.name}'")
        config = copy.deepcopy(base.config)
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types)[:layers]
        with torch.device("meta"):
            shell = type(base)(config)
        for name, child in base.named_children():
            setattr(shell, name, child)
        shell.layers = torch.nn.ModuleList(list(base.layers)[:layers])
        shell.config = config
        self.module = shell.eval()
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.source = loaded.source
        try:  # the content identity of the backbone's weights (harness.models.loading.load_model records it)
            self.identity = str(loaded.identity)
        except (ConfigError, AttributeError):
            self.identity = f"source:{loaded.source}"
        self.layers = layers
        self.full_depth = layers == total  # then the LM head on the last state gives the model's own next-token logits
        self.lm_head = model.get_output_embeddings()
        self.hidden_size = int(config.hidden_size)
        embed = base.get_input_embeddings()
        # Input embeddings are a lookup, not a matmul: they are not charged (the LM head is, where log-probs are read).
        self.flops_parameters = int(sum(p.numel() for p in self.module.parameters()) - embed.weight.numel())
        self.lm_head_parameters = int(self.lm_head.weight.numel())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def hidden_states(self, rows: Sequence[list[int]], batch_tokens: int = 4096, logprobs: bool = False) -> list[Any]:
        """Last hidden states (seq_len x hidden) of each row, batched by length to limit padding; with `logprobs`,
        (states, log p(token t | tokens < t) for t >= 1, with 0 at t = 0) pairs."""
        import torch

        if logprobs and not self.full_depth:
            raise ConfigError(f"reward_model.features: logprob reads the LM head, so reward_model.layers must be the "
                              f"backbone's depth, not {self.layers}")

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[Any] = [None] * len(rows)
        pad = self.tokenizer.pad_token_id or 0
        i = 0
        while i < len(order):
            width = len(rows[order[i]])
            j = i + 1
            while j < len(order) and (j - i + 1) * max(width, len(rows[order[j]])) <= batch_tokens:
                width = max(width, len(rows[order[j]]))
                j += 1
            idx = order[i:j]
            input_ids = torch.tensor([rows[k] + [pad] * (width - len(rows[k])) for k in idx])
            mask = torch.tensor([[1] * len(rows[k]) + [0] * (width - len(rows[k])) for k in idx])
            with torch.no_grad():
                h = self.module(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
                lp = self._token_logprobs(h, input_ids) if logprobs else None
            for r, k in enumerate(idx):
                out[k] = h[r, : len(rows[k])] if lp is None else (h[r, : len(rows[k])], lp[r, : len(rows[k])])
            i = j
        return out

    def _token_logprobs(self, h: Any, input_ids: Any, rows_per_chunk: int = 8) -> Any:
        """log p(input_ids[:, t] | < t) from the final states; a few rows at a time bound the vocabulary-wide logits."""
        import torch

        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        for r in range(0, h.shape[0], rows_per_chunk):
            logits = self.lm_head(h[r : r + rows_per_chunk, :-1].to(self.lm_head.weight.dtype)).float()
            target = input_ids[r : r + rows_per_chunk, 1:]
            out[r : r + rows_per_chunk, 1:] = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
        return out


@dataclass
class LinearHead:
    """A logistic head on standardised features: score = sigmoid(w·(x - mean)/scale + b)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def sha256(self) -> str:
        """The digest of the head's saved state (the arrays `save` writes: dtype, shape and bytes)."""
        import hashlib

        h = hashlib.sha256()
        for name, value in (("mean", self.mean), ("scale", self.scale), ("coef", self.coef),
                            ("intercept", np.array([self.intercept]))):
            a = np.ascontiguousarray(value)
            h.update(f"{name}|{a.dtype}|{a.shape}\n".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef, intercept=np.array([self.intercept]))

    @classmethod
    def load(cls, path: Path) -> "LinearHead":
        d = np.load(path)
        return cls(d["mean"], d["scale"], d["coef"], float(d["intercept"][0]))


class EmbeddedHeadRM(RewardModel):
    """A value head on the hidden states of the embedded LM's first layers, read at each step's end.

    Input: the question as a user turn in the backbone's chat template (or `input_template`), then
    each step followed by the step separator, tokenized piece by piece so every step's last token is
    known; a PRM reads the state there for every step, an ORM only after the last step.
    """

    HEAD_FILE = "head.npz"
    META_FILE = "reward_model.json"

    def __init__(self, rm: RewardModelConfig, backbone: TruncatedBackbone, head: LinearHead | None = None,
                 provenance: dict | None = None):
        self.config = rm
        self.backbone = backbone
        self.head = head
        self.provenance = provenance or {}
        reads_lm_head = "logprob" in rm.features
        self.flops_parameters = (backbone.flops_parameters + (backbone.lm_head_parameters if reads_lm_head else 0)
                                 + self.feature_dim + 1)
        self._cache: dict[tuple, np.ndarray] = {}

    @property
    def identity(self) -> str:
        """The head's state, the backbone's weights and layer count, and the scoring config."""
        if self.head is None:
            raise ConfigError(f"reward_model '{self.name}': the embedded head is not trained: it has no identity")
        from harness.models.identity import json_sha256

        digest = json_sha256({"head": self.head.sha256(), "backbone": self.backbone.identity,
                              "layers": self.backbone.layers, "config": self._config_sha256()})
        return f"embedded:{digest}"

    # -- features -------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return sum(3 if kind == "logprob" else self.backbone.hidden_size for kind in self.config.features)

    def _prefix_ids(self, question: str) -> list[int]:
        tok = self.backbone.tokenizer
        if self.config.use_chat_template and getattr(tok, "chat_template", None):
            return list(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False))
        from harness.data.prompts import fill

        return self.backbone.encode(fill(self.config.input_template, {"question": question}, "input_template"))

    def layout(self, question: str, steps: Sequence[str]) -> tuple[list[int], int, list[int]]:
        """(token ids, question length, end position (exclusive) of each step)."""
        ids = list(self._prefix_ids(question))
        q_len, ends = len(ids), []
        for s in steps:
            ids += self.backbone.encode(s + self.config.step_separator)
            ends.append(len(ids))
        return ids, q_len, ends

    def step_features(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each solution, a (num_steps x dim) array of features (cached by text)."""
        layouts = [self.layout(q, ss) for q, ss in zip(questions, steps)]
        keys = [(q, tuple(ss)) for q, ss in zip(questions, steps)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache and steps[i]]
        max_len = self.config.max_length
        logprobs = "logprob" in self.config.features
        # tokens of each step's own text (without the separator), where log-probs are read
        texts = {i: [len(self.backbone.encode(st)) for st in steps[i]] for i in todo} if logprobs else {}
        states = self.backbone.hidden_states([layouts[i][0][:max_len] for i in todo], logprobs=logprobs) if todo else []
        for i, state in zip(todo, states):
            h, lp = state if logprobs else (state, None)
            _, q_len, ends = layouts[i]
            feats = []
            for k, end in enumerate(ends):
                end = min(end, h.shape[0])
                start = min(q_len if k == 0 else ends[k - 1], end - 1)
                parts = []
                for kind in self.config.features:
                    if kind == "last":
                        parts.append(h[end - 1].numpy())
                    elif kind == "mean":
                        parts.append(h[start:end].mean(0).numpy())
                    else:  # how sure the policy was of its own tokens: a wrong line is often an unlikely one, and
                        # a prefix is only as sound as its least likely token (the labels ask: unbroken so far?).
                        # The separator appended after each step is left out: after the last one it is not the
                        # policy's (it stopped there), and its low log-prob would be every solution's minimum
                        text_end = max(start + 1, min(end, start + texts[i][k]))
                        step, prefix = lp[start:text_end].numpy(), lp[q_len:text_end].numpy()
                        parts.append(np.array([prefix.min(), step.min(), step.mean()], dtype=np.float32))
                feats.append(np.concatenate(parts))
            self._cache[keys[i]] = np.stack(feats)
        return [self._cache[k] if steps[i] else np.zeros((0, self.feature_dim)) for i, k in enumerate(keys)]

    def score_steps(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[ScoredSolution]:
        if self.head is None:
            raise ConfigError(f"reward_model '{self.name}': the embedded head is not trained (no {self.HEAD_FILE})")
        feats = self.step_features(questions, steps)
        out = []
        for q, ss, f in zip(questions, steps, feats):
            _, q_len, ends = self.layout(q, ss)
            bounds = [q_len] + ends
            tokens = [bounds[i + 1] - bounds[i] for i in range(len(ends))]
            if not len(ss):
                out.append(ScoredSolution([], q_len, []))
                continue
            scores = self.head(f).tolist()
            if self.level == "orm":
                scores, tokens = scores[-1:], [sum(tokens)]
            out.append(ScoredSolution([float(s) for s in scores], q_len, tokens))
        return out

    # -- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from omegaconf import OmegaConf

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.head is None:
            raise ConfigError(f"reward_model '{self.name}': nothing to save, the head is not trained")
        self.head.save(folder / self.HEAD_FILE)
        cfg = asdict(self.config)
        backbone = cfg.get("backbone")
        if backbone is not None and not isinstance(backbone, (str, dict)):
            cfg["backbone"] = OmegaConf.to_container(backbone, resolve=True)
        meta = {
            "config": cfg,
            "backbone": {"name": self.backbone.name, "identity": self.backbone.identity,
                         "source": portable(self.backbone.source), "layers": self.backbone.layers},
            "provenance": portable_tree(self.provenance),
        }
        (folder / self.META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, loaded_backbone: Any = None) -> "EmbeddedHeadRM":
        """Reload a saved head; the backbone LM is loaded from its config unless an already loaded one is given."""
        folder = Path(folder)
        meta_path = folder / cls.META_FILE
        if not meta_path.is_file():
            raise ConfigError(f"reward_model.path: {folder} holds no {cls.META_FILE} (not a saved embedded reward model)")
        meta = json.loads(meta_path.read_text())
        rm = reward_model_config({**meta["config"], "path": str(folder)})
        if loaded_backbone is None:
            loaded_backbone = load_backbone_model(rm)
        saved_for = meta["backbone"].get("identity")
        given = str(getattr(loaded_backbone, "identity", ""))
        if saved_for != given:  # by content: the same weights anywhere are the same backbone
            raise ConfigError(
                f"reward_model '{rm.name}': {meta_path.name} was trained on backbone {saved_for} "
                f"({meta['backbone'].get('source')}), given {given}"
            )
        return cls(rm, TruncatedBackbone(loaded_backbone, rm.layers), LinearHead.load(folder / cls.HEAD_FILE),
                   meta.get("provenance"))


def load_backbone_model(rm: RewardModelConfig) -> Any:
    from omegaconf import OmegaConf

    from harness.data.problems import PROJECT_ROOT
    from harness.models.loading import load_model

    spec = rm.backbone
    if spec is None:
        raise ConfigError(f"reward_model '{rm.name}': kind embedded needs reward_model.backbone (a conf/model config)")
    if isinstance(spec, str):
        path = PROJECT_ROOT / "conf" / "model" / f"{spec}.yaml"
        if not path.is_file():
            raise ConfigError(f"reward_model.backbone: no model config {path}")
        spec = OmegaConf.load(path)
    return load_model(OmegaConf.create(spec) if isinstance(spec, dict) else spec)


def load_reward_model(cfg: Any, loaded_backbone: Any = None) -> RewardModel:
    """The reward model a config describes. `embedded` needs `path` (a saved head) to be usable here;
    training one is harness.reward.training's job."""
    rm = reward_model_config(cfg)
    if rm.kind == "causal_lm_prm":
        return CausalLMPRM(rm)
    if rm.kind == "sequence_classifier":
        if rm.level != "orm":
            raise ConfigError(f"reward_model '{rm.name}': a sequence_classifier scores whole solutions: set level: orm")
        return SequenceClassifierORM(rm)
    if not rm.path:
        raise ConfigError(f"reward_model '{rm.name}': kind embedded needs reward_model.path (a folder written by save)")
    return EmbeddedHeadRM.load(rm.path, loaded_backbone)
