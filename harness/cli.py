"""The entry point every replication shares: Hydra app over conf/, user errors as one line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import hydra
from omegaconf import DictConfig

from harness.errors import HarnessError


def check_startup(cfg: DictConfig) -> None:
    """What every replication checks before it loads a model or draws a sample: every sampling node's values,
    and the paper's published numbers (results/published/<paper>.yaml), which its report shows beside ours."""
    from harness.config import check_sampling
    from harness.reporting.published import load_published

    check_sampling(cfg)
    if cfg.get("paper"):
        load_published(str(cfg.paper))

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def one_line(err: BaseException) -> str:
    """An exception (and its cause) as one line: Hydra's own messages span several."""
    parts = []
    while err is not None and len(parts) < 3:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if first not in parts:
            parts.append(first)
        err = err.__cause__ or err.__context__
    return ": ".join(parts)


def check_overrides(config_name: str, overrides: Sequence[str]) -> str | None:
    """Compose the config with the command-line overrides; the one-line error if that fails.

    Done before Hydra's own start-up so that an unknown config key or option (`model=nope`,
    `sampling.temprature=1`) is reported as one line naming it, not as Hydra's multi-line report.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # noqa: BLE001 - any composition failure is the user's config
        return one_line(err)
    finally:
        GlobalHydra.instance().clear()
    return None


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """`python -m replications.<paper> key=value ...` runs `task(cfg)` on conf/<config_name>.yaml."""

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def hydra_main(cfg: DictConfig) -> Any:
        try:
            check_startup(cfg)
            return task(cfg)
        except HarnessError as err:
            # SystemExit passes through Hydra's exception reporting: the user sees one line.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def main() -> Any:
        args = sys.argv[1:]
        if not any(a.startswith("-") for a in args):  # flags (-m, --help, --cfg...) are Hydra's to handle
            problem = check_overrides(config_name, args)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                sys.exit(2)
        return hydra_main()

    return main
