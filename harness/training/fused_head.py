"""Score only the labelled positions in TRL's fused LM head on CPU, as TRL itself does on CUDA.

TRL's trainers compute the loss with a fused, tiled LM head (`trl.trainer.utils.add_fused_lm_head`). On
Triton devices it projects only the positions that carry a label; everywhere else it projects every position,
so that compiled backends (Neuron) see fixed tile shapes. Eager CPU training recompiles nothing, and there the
full projection is the larger part of a short-sequence step: on a warm-start batch of the ladder (16 x 81
tokens, a quarter of them labelled) the vocabulary projection and log-softmax over every position took 6 of
a 12-s step. Scoring the labelled rows only is the same loss (unlabelled rows add exact zeros; 10 steps' losses
agree to ~1e-7), with float rounding in the last bits of the weights. The warm start's 75 steps on an idle 2-core
AMD EPYC: 961 s before, 644 and 674 s in two runs with it (1.4-1.5x).

TRL exposes no option for it, so the decision function it consults is swapped for the length of a training
run; a TRL without that function is reported instead of silently training the slow way.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from harness.errors import ConfigError

_SWITCH = "_use_triton"  # trl.trainer.utils: "compact" (labelled rows only) where this returns True


@contextmanager
def labelled_positions_only(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, _SWITCH, None)
    if original is None:
        raise ConfigError(
            f"training.score_labelled_positions_only: this TRL has no trl.trainer.utils.{_SWITCH} to switch; set it to false"
        )
    setattr(trl_utils, _SWITCH, lambda device: device.type == "cpu" or original(device))
    try:
        yield
    finally:
        setattr(trl_utils, _SWITCH, original)
