"""Checks of the Minitron presets (``configs/minitron/<preset>.yaml``) that run before anything is written."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import config_dir
from climb_hpc.errors import ConfigError

#: Minitron values whose defaults (configs/minitron/default.yaml) suit only the built-in tiny models: the teacher
#: `correct` pretrains when minitron.teacher.path is null (correct.lr null = its pretrain_lr) and the student
#: pruned from it. (stage, key): with a given teacher each must be set, on the command line or by a preset.
TINY_MODEL_KEYS = (("correct", "lr"), ("correct", "warmup"), ("correct", "global_batch_size"),
                   ("distill", "lr"), ("distill", "warmup"), ("distill", "global_batch_size"))


def check_given_teacher(cfg: DictConfig, stages: list[str]) -> None:
    """ConfigError when ``minitron.teacher.path`` is set and a stage that will run keeps a value of
    :data:`TINY_MODEL_KEYS` at the tiny default, naming the keys and the presets that set them: no 8B teacher
    silently corrected at the tiny teacher's LR (3e-3 x 0.2) or batch (16 sequences)."""
    m = cfg.get("minitron")
    if m is None or not m.teacher.path:
        return
    group = config_dir() / "minitron"
    tiny = OmegaConf.load(group / "default.yaml")
    left = [f"minitron.{stage}.{key}={'null' if m[stage][key] is None else m[stage][key]}"
            for stage, key in TINY_MODEL_KEYS if stage in stages and m[stage][key] == tiny[stage][key]]
    if not left:
        return
    presets = "|".join(sorted(p.stem for p in group.glob("*.yaml") if p.stem != "default"))
    raise ConfigError(
        f"minitron.teacher.path={m.teacher.path} is a given teacher, but {', '.join(left)} keep the built-in tiny "
        f"model's values ({group / 'default.yaml'}; lr null = the tiny teacher's pretrain_lr): set them for your "
        f"teacher, or choose a preset that sets them: minitron={presets} (experiment=climb_minitron_paper selects "
        "minitron=llama31_8b_to_4b_width)")
