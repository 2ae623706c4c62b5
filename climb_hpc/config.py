"""Config: a Hydra tree in ``configs/`` composed with the user's ``key=value`` overrides.

The tree mirrors the package (``cluster/``, ``corpus/``, ``pipeline/`` ...). We use Hydra's compose
API rather than ``@hydra.main`` because the run folder, not Hydra's output dir, owns a run's state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import ConfigError  # re-exported: most modules import it from here

__all__ = ["ConfigError", "compose", "config_dir", "differing_keys", "section"]

#: Keys a resumed run may change: where and how it runs, not what it computes.
RUNTIME_KEYS = ("cluster", "run_dir", "until", "dry_run", "format", "progress", "plan")




def config_dir() -> Path:
    """``$CLIMB_HPC_CONFIGS``, else ``configs/`` next to the package (source checkout / editable install)."""
    env = os.environ.get("CLIMB_HPC_CONFIGS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "configs", here / "configs"]
    for c in candidates:
        if (c / "config.yaml").exists():
            return c
    raise ConfigError(
        f"cannot find the config tree (looked in {', '.join(map(str, candidates))}); "
        "install climb-hpc from a checkout with `pip install -e .` or set CLIMB_HPC_CONFIGS"
    )


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides such as ``cluster=slurm corpus.paths=[a,b]``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad config override: {e}") from None
    OmegaConf.set_struct(cfg, False)
    return cfg


def differing_keys(saved: DictConfig, new: DictConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, runtime keys excepted."""
    a = OmegaConf.to_container(saved, resolve=True)
    b = OmegaConf.to_container(new, resolve=True)
    out: list[str] = []

    def walk(x: object, y: object, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out.append(prefix.rstrip("."))

    walk(a, b, "")
    return [k for k in out if k.split(".")[0] not in RUNTIME_KEYS]


def section(cfg: DictConfig, name: str, default: str = "default") -> DictConfig:
    """``cfg.<name>``, or a ConfigError saying which config group to add."""
    value = cfg.get(name)
    if value is None:
        raise ConfigError(f"no {name} config: add `- {name}: {default}` to the defaults of configs/config.yaml "
                          f"or pass {name}={default}")
    return value
