"""The steps every paper shares: an experiment (problems, policy, prompts, store) and the loop for papers whose
policy changes (`PolicyLoop`: stages in a ledger, checkpoints, resume)."""
from harness.pipeline.experiment import BASE, Experiment, Policy, prompt_from_cfg, setup_experiment
from harness.pipeline.iterated import PolicyLoop, StageFailure, config_fingerprint, derived_seed, sample_info

__all__ = ["BASE", "Experiment", "Policy", "PolicyLoop", "StageFailure", "config_fingerprint", "derived_seed",
           "prompt_from_cfg", "sample_info", "setup_experiment"]
