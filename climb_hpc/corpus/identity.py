"""Tokenizer identity: a run's token ids must mean to its models what they meant when the models learned them.

When a checkpoint is given (the teacher, a model to score or prune, distill's teacher or student, the proxy
trials' ``proxy.init``), the run
tokenizes with that checkpoint's own tokenizer unless ``tokenize.tokenizer`` names one, and any tokenizer
that differs from a given checkpoint's is refused before anything runs (:func:`check`), naming both by
vocabulary size and fingerprint (``climb_hpc.corpus.tokenizer.identity``). A run folder whose data were
already tokenized with another tokenizer is refused too: its token stores would have to be made again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import ConfigError

#: checkpoints whose tokenizer the run's data must be in: (config key, the stage that reads it)
CHECKPOINTS = (("minitron.teacher.path", "correct"), ("minitron.importance.model", "importance"),
               ("minitron.prune.model", "prune"), ("minitron.distill.teacher", "distill"),
               ("minitron.distill.student", "distill"), ("proxy.init", "search"))


def given_checkpoints(cfg: DictConfig, stages: Optional[list[str]] = None) -> list[tuple[str, Path]]:
    """(key, folder) of every checkpoint the config gives to a stage of ``stages`` (default: the pipeline's)."""
    stages = set(cfg.pipeline.stages if stages is None else stages)
    out = []
    for key, stage in CHECKPOINTS:
        value = OmegaConf.select(cfg, key)
        if value and stage in stages:
            out.append((key, Path(str(value)).expanduser().resolve()))
    return out


def run_tokenizer(cfg: DictConfig) -> Optional[str]:
    """The tokenizer folder the run tokenizes with: ``tokenize.tokenizer`` when set, else the first given
    checkpoint's; None: the tokenize stage trains a BPE on the corpus."""
    t = cfg.tokenize.tokenizer
    if t:
        return str(Path(str(t)).expanduser().resolve())
    given = given_checkpoints(cfg)
    return str(given[0][1]) if given else None


def _identity(key: str, folder: Path) -> dict[str, Any]:
    from climb_hpc.corpus.tokenizer import identity

    try:
        return identity(folder)
    except FileNotFoundError:
        raise ConfigError(f"{key}={folder} holds no tokenizer.json: the run tokenizes with the checkpoint's own "
                          "tokenizer. Save it there (tokenizer.save_pretrained), or set tokenize.tokenizer to a "
                          "folder that holds it") from None


def check(cfg: DictConfig, names: list[str]) -> None:
    """ConfigError, before anything runs, when the tokenizer of a checkpoint given to a stage of this launch
    (``names``) differs from the run's."""
    from climb_hpc.corpus.tokenizer import identity_text

    given = given_checkpoints(cfg, names)
    if not given:
        return
    named = [("tokenize.tokenizer", Path(run_tokenizer(cfg) or ""))] if cfg.tokenize.tokenizer else []
    idents = {key: (folder, _identity(key, folder)) for key, folder in [*named, *given]}
    ref_key = next(iter(idents))
    ref_folder, ref = idents[ref_key]
    for key, (folder, ident) in idents.items():
        if ident != ref:
            raise ConfigError(
                f"{key}={folder} has another tokenizer ({identity_text(ident)}) than {ref_key}={ref_folder} "
                f"({identity_text(ref)}): its token ids would mean other tokens to the model. Give checkpoints of "
                "one tokenizer" + (", or leave tokenize.tokenizer unset to use the checkpoint's" if named else ""))
    _check_run_folder(cfg, ref_key, ref_folder, ref)


def _check_run_folder(cfg: DictConfig, ref_key: str, ref_folder: Path, ref: dict[str, Any]) -> None:
    """A run folder whose corpus is already tokenized must have used a tokenizer with the same ids."""
    from climb_hpc.corpus.tokenizer import identity, identity_text
    from climb_hpc.rundir import RunDir, read_json
    from climb_hpc.stage import get_stage  # tokenize's outputs (tokenize imports this module)

    rd = RunDir(cfg.run_dir)
    out = get_stage("tokenize").outputs(rd)
    plan = read_json(out.plan) if rd.exists() else None
    if plan is None:
        return
    source = plan["settings"].get("tokenizer")
    used = Path(source) if source and (Path(source) / "tokenizer.json").is_file() else out.tokenizer
    if not (used / "tokenizer.json").is_file():
        return  # not made yet: tokenize's own plan check refuses other settings
    ident = identity(used)
    if ident != ref:
        what = source or "a BPE trained on it"
        raise ConfigError(f"{rd.path} tokenized its corpus with {what} ({identity_text(ident)}), not with "
                          f"{ref_key}={ref_folder}'s tokenizer ({identity_text(ref)}): its token stores would mean "
                          f"other tokens to the model. Start a new run_dir=, or give {ref_key} a checkpoint of the "
                          "run's tokenizer")
