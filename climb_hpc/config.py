"""Config: a Hydra tree in ``configs/`` composed with the user's ``key=value`` overrides.

The tree mirrors the package (``cluster/``, ``corpus/``, ``pipeline/`` ...). We use Hydra's compose
API rather than ``@hydra.main`` because the run folder, not Hydra's output dir, owns a run's state.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import ConfigError  # re-exported: most modules import it from here

__all__ = ["ConfigError", "compose", "config_dir", "differing_keys", "section"]

#: Keys a resumed run may change: where and how it runs, not what it computes.
RUNTIME_KEYS = ("cluster", "run_dir", "until", "dry_run", "format", "progress", "plan", "preflight")




def config_dir() -> Path:
    """``$CLIMB_HPC_CONFIGS`` when set (it must hold config.yaml), else the tree shipped inside the package
    (``climb_hpc/configs``; a checkout's ``configs/`` is a link to it)."""
    env = os.environ.get("CLIMB_HPC_CONFIGS")
    c = Path(env).expanduser().resolve() if env else Path(__file__).resolve().parent / "configs"
    if (c / "config.yaml").is_file():
        return c
    if env:
        raise ConfigError(f"CLIMB_HPC_CONFIGS={env}: no config.yaml there; point it at a config tree "
                          "(a copy of climb_hpc/configs) or unset it to use the one climb-hpc ships")
    raise ConfigError(f"cannot find the config tree: no config.yaml in {c}; this climb-hpc install is "
                      "incomplete: reinstall it (its wheel ships climb_hpc/configs) or set CLIMB_HPC_CONFIGS")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides such as ``cluster=slurm corpus.paths=[a,b]``.

    Every key must exist in the config tree (``+key=`` too): an unknown key fails with the nearest valid
    keys named. Keys of the open maps (``cluster.stage_resources``, ``cluster.extra_sbatch`` ...) are
    the user's and need no ``+``. The result is validated (:mod:`climb_hpc.validate`) before it is
    returned, so nothing is written for a config with a wrong value."""
    from climb_hpc.validate import under_open_map, validate, whole_numbers

    parsed = _parse(overrides)
    groups = _config_groups()
    for o in parsed:
        if o.key_or_group in groups and not o.is_delete():
            _check_option(o.key_or_group, o.value())
    selections = [raw for raw, o in zip(overrides, parsed, strict=True) if o.key_or_group in groups and not o.is_delete()]
    defaults = _hydra_compose(selections)  # the tree the user's keys must exist in, typed by climb_hpc/schema.py
    final: list[str] = []
    for raw, o in zip(overrides, parsed, strict=True):
        key = o.key_or_group
        if key in groups:
            final.append(raw)
        elif under_open_map(key):
            final.append(raw if o.is_delete() else "++" + raw.lstrip("+"))
        elif o.is_delete():
            raise ConfigError(f"{raw}: deleting a key is not supported; set it to null instead ({key}=null)")
        else:
            _check_known(defaults, key)
            final.append(_typed(raw.lstrip("+"), key, o.value(), defaults))
    cfg = _hydra_compose(final, defaults)  # typed and in struct mode (Hydra's compose sets it)
    validate(cfg)
    whole_numbers(cfg)
    return cfg


def _typed(raw: str, key: str, value: object, defaults: DictConfig) -> str:
    """The override as Hydra gets it, once its value is of the key's declared type (ConfigError naming the key
    and the type if not). Checked here rather than by Hydra, which would read ``yes`` as true and ``12`` as the
    string "12"; a whole float for an integer (``tokens=1e6``) is passed on as the integer."""
    from climb_hpc.schema import check, lookup

    executor = defaults.cluster.executor
    check(key, value, executor)
    d = lookup(key, executor)
    if d is not None and d[0] is int and isinstance(value, float):
        return f"{key}={int(value)}"
    return raw


#: Keys that belong to one launch and never carry over from the saved config on a resume.
PER_LAUNCH_KEYS = ("until", "dry_run", "preflight")


def compose_for_run(overrides: Sequence[str] = ()) -> DictConfig:
    """The config of a launch: ``compose(overrides)`` for a new run folder; for an existing one, the config
    it was saved with, changed only at the keys given now (a key, or a whole group for ``cluster=slurm``).

    So a run resumes with ``climb-hpc run run_dir=X`` alone, and a resume that repeats the first launch's
    overrides changes nothing."""
    from climb_hpc.rundir import RunDir
    from climb_hpc.validate import validate

    cfg = compose(overrides)
    rd = RunDir(cfg.run_dir)
    if not rd.exists():
        return cfg
    merged = rd.load_config()
    OmegaConf.set_struct(merged, True)  # force_add below: a key given now that the saved config lacks (an open map's)
    given = {o.key_or_group.lstrip("~") for o in _parse(overrides)} | set(PER_LAUNCH_KEYS) | {"run_dir"}
    for group in sorted(g for g in given & _config_groups() if OmegaConf.select(cfg, g, default=None) is None):
        # a group of package _global_ (experiment=) has no key of its own: the keys it sets are the ones given
        given.discard(group)
        given |= set(differing_keys(compose([o for o in overrides if o.partition("=")[0] != group]), cfg))
    for key in sorted(given):
        value = OmegaConf.select(cfg, key, default=None)
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    validate(merged)
    return merged


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from climb_hpc.validate import check_text

    parser = OverridesParser.create()
    out = []
    for raw in overrides:
        key, _, value = raw.partition("=")
        check_text(key.lstrip("+~"), value)  # before Hydra's parser, whose message would not say why
        try:
            out += parser.parse_overrides([raw])
        except HydraException as e:
            raise ConfigError(f"cannot read the override {raw!r}: {str(e).splitlines()[0]} "
                              "(write key=value; quote values with spaces or special characters)") from None
    return out


def _check_option(group: str, option: object) -> None:
    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    if not isinstance(option, str) or option not in options:
        raise ConfigError(f"{group}={option}: no such {group} config; choose one of {', '.join(options)} "
                          f"(files in {config_dir() / group})")


def _config_groups() -> set[str]:
    return {p.name for p in config_dir().iterdir() if p.is_dir()}


def _hydra_compose(overrides: Sequence[str], defaults: DictConfig | None = None) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from climb_hpc.schema import register

    register()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        message = str(e)
        m = re.search(r"Could not override '([^']+)'", message)
        if m and defaults is not None:
            _check_known(defaults, m.group(1))
        inner = next((x for x in (e, e.__cause__, e.__context__)
                      if isinstance(x, OmegaConfBaseException) and getattr(x, "full_key", None)), None)
        if inner is not None:
            # a key of a config file that the schema lacks, or a value not of its key's type (compose checked
            # the overrides already)
            where = re.match(r"In '([^']+)'", message)
            file = f" in {config_dir() / where.group(1)}.yaml" if where else ""
            kind = "unknown config key" if isinstance(inner, ConfigKeyError) else "wrong type"
            raise ConfigError(f"{kind} {inner.full_key}{file}: {str(inner).splitlines()[0]} (every key and its type: "
                              f"{Path(__file__).parent / 'schema.py'})") from None
        raise ConfigError(f"bad config override: {message.splitlines()[0]}") from None


_ABSENT = object()


def _check_known(defaults: DictConfig, key: str) -> None:
    """ConfigError naming the nearest valid keys unless ``key`` exists in the config tree."""
    if OmegaConf.select(defaults, key, default=_ABSENT) is not _ABSENT:
        return
    keys = _all_keys(OmegaConf.to_container(defaults))
    leaf = key.rsplit(".", 1)[-1]
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    near += [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.6) if k not in near]
    hint = f"; did you mean {' or '.join(near[:3])}?" if near else ""
    raise ConfigError(f"unknown config key {key!r}{hint} (the keys and their defaults are in {config_dir()})")


def _all_keys(node: object, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(f"{prefix}{k}")
            out += _all_keys(v, f"{prefix}{k}.")
    return out


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
