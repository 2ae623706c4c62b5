"""Stage ``correct``: teacher correction (Minitron): fine-tune the teacher on the distillation data.

The teacher is an HF checkpoint (``minitron.teacher.path``), or, when that is null, a tiny Llama from
``minitron.teacher.model`` first pretrained on every cluster's token store (natural proportions) for
``teacher.pretrain_tokens`` -> ``<run>/teacher_base/``. That pretraining is its own checkpointed phase
(``correct/pretrain/``), so a preemption during it resumes too. Correction then trains on the mixed
dataset at the teacher's peak LR x ``correct.lr_scale`` (paper: peak / 5) with a short warmup::

    <run>/teacher_base/          the pretrained tiny teacher (only when teacher.path is null)
    <run>/teacher/               the corrected teacher (HF checkpoint + the run's tokenizer)
    correct/pretrain/            the pretraining phase's train_log.jsonl, metrics.json (ckpt/ while running)
    correct/train_log.jsonl      one line a step; correct/metrics.json (val loss before/after) written last
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import section
from climb_hpc.estimate import Inputs, Ledger, Work, train_flops, training_mem_gb
from climb_hpc.minitron import PhaseFiles
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.minitron.engine import Phase
    from climb_hpc.rundir import RunDir

NAME = "correct"


@dataclass(frozen=True)
class Outputs(PhaseFiles):
    """What correct writes (the layout above): two model folders in the run folder, its logs under ``correct/``."""

    teacher_base: Path
    teacher: Path

    @property
    def pretrain(self) -> Path:
        return self.dir / "pretrain"


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME, rd.path / "teacher_base", rd.path / "teacher")


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The run's tokenizer, and the mixed dataset unless ``correct.data`` names other data."""
    return ("tokenize",) if _m(cfg).correct.get("data") else ("tokenize", "mix")


def _m(cfg: DictConfig) -> DictConfig:
    return section(cfg, "minitron")


def seed_of(cfg: DictConfig) -> int:
    s = _m(cfg).get("seed")
    return int(cfg.seed if s is None else s)


def plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)  # type: ignore


def tokenizer_info(rd: RunDir) -> dict[str, Any]:
    from climb_hpc.corpus.tokenize import summary_path
    from climb_hpc.rundir import read_json

    s = read_json(summary_path(rd))
    if s is None:
        raise FileNotFoundError(f"{summary_path(rd)} is missing: run the tokenize stage first")
    return s


def load_hf(path: str | Path, dtype: Any = None) -> Any:
    """An HF causal LM from a local folder, in ``dtype`` (default fp32; bf16 on GPUs: no fp32 copy is ever made),
    SDPA attention, no KV cache. Inside ``ds.zero3_construction`` it is built and loaded sharded (zero.Init)."""
    import torch
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not an HF checkpoint (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype or torch.float32, attn_implementation="sdpa",
                                                 local_files_only=True)
    model.config.use_cache = False
    return model


def pretrain_phase(cfg: DictConfig, rd: RunDir) -> Phase:
    """The tiny teacher's pretraining on all clusters -> <run>/teacher_base/."""
    from climb_hpc.corpus.tokenize import tokenizer_dir
    from climb_hpc.minitron.data import cluster_data
    from climb_hpc.minitron.engine import LMObjective, Phase, phase_seed
    from climb_hpc.proxy.model import build_model

    m, s = _m(cfg), plain(_m(cfg).correct)
    t = m.teacher
    sec = {**s, "tokens": int(t.pretrain_tokens), "lr": float(t.pretrain_lr), "warmup": t.pretrain_warmup}
    info = tokenizer_info(rd)
    seed = phase_seed(seed_of(cfg), "teacher-pretrain")
    holdout = float(t.get("holdout_fraction") if t.get("holdout_fraction") is not None else cfg.proxy.holdout_fraction)
    seq_len = int(s["seq_len"])
    return Phase(
        name="teacher-pretrain", section=sec, work=outputs(rd).pretrain, model_dir=outputs(rd).teacher_base,
        build=lambda: build_model(t.model, info["vocab_size"], info["eos_id"], seq_len, seed),
        data=lambda n: cluster_data(rd, seq_len, n, seed, holdout, int(s["val_tokens"])),
        objective=LMObjective(), seed=seed, tokenizer_dir=tokenizer_dir(rd),
        info={"teacher_config": plain(t.model)})


def correct_phase(cfg: DictConfig, rd: RunDir, teacher: Path) -> Phase:
    from climb_hpc.corpus.tokenize import tokenizer_dir
    from climb_hpc.minitron import ds
    from climb_hpc.minitron.data import flat_data
    from climb_hpc.minitron.engine import LMObjective, Phase, phase_seed

    m, s = _m(cfg), plain(_m(cfg).correct)
    peak = float(s["lr"] if s.get("lr") is not None else m.teacher.pretrain_lr)
    scale = float(s["lr_scale"])
    seed = phase_seed(seed_of(cfg), NAME)
    return Phase(
        name=NAME, section={**s, "lr": peak * scale}, work=outputs(rd).dir, model_dir=outputs(rd).teacher,
        build=lambda: load_hf(teacher, ds.model_dtype(s)),
        data=lambda n: flat_data(rd, s.get("data"), int(s["seq_len"]), n, seed, int(s["val_tokens"]),
                                 str(s["text_field"])),
        objective=LMObjective(), seed=seed, tokenizer_dir=tokenizer_dir(rd),
        info={"teacher": str(teacher), "teacher_peak_lr": peak, "lr_scale": scale})


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.minitron import ds
    from climb_hpc.minitron.engine import run_phase
    from climb_hpc.training import torch_threads

    m = _m(cfg)
    s = m.correct
    with ds.distributed(s), torch_threads(int(s.get("cpus") or 1)):
        teacher = m.teacher.get("path")
        if not teacher:
            run_phase(pretrain_phase(cfg, rd))
            teacher = outputs(rd).teacher_base
        run_phase(correct_phase(cfg, rd, Path(teacher)))


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """Training the teacher on the mix (6N + attention FLOP a token), after pretraining the built-in tiny teacher
    when no ``teacher.path`` is given; a rank holds its ZeRO share of the AdamW state."""
    from climb_hpc.minitron.engine import num_steps
    from climb_hpc.minitron.sizes import teacher
    from climb_hpc.stage import stage_resources

    m = _m(cfg)
    t_dims, tiny = teacher(cfg, x.vocab, led)
    c = m.correct
    seq = int(c.seq_len)
    tokens = led.use("correct tokens", num_steps(c) * int(c.global_batch_size) * seq,
                     "minitron.correct.tokens, rounded up to whole steps")
    flop = train_flops(t_dims, seq) * tokens
    if tiny:
        pre = {"tokens": m.teacher.pretrain_tokens, "global_batch_size": c.global_batch_size, "seq_len": seq}
        pre_tokens = led.use("teacher pretraining tokens", num_steps(pre) * int(c.global_batch_size) * seq,
                             "minitron.teacher.pretrain_tokens (teacher.path is null)")
        flop += train_flops(t_dims, seq) * pre_tokens
    ranks = stage_resources(cfg, STAGE).world_size
    return Work("LLM training", [1], flop=flop, model=True,
                mem_gb=training_mem_gb(t_dims, ranks, int(c.zero_stage)))


STAGE = Stage(name=NAME, run=run, num_tasks=lambda cfg, rd: 1, section="minitron.correct",
              resources=lambda cfg: Resources.from_config(_m(cfg).correct), checkpointable=True,
              reads=reads, outputs=outputs, estimate=estimate)
