"""Stage ``distill``: knowledge distillation of the (pruned) student from the corrected teacher.

Loss a token: forward KL(teacher || student) on logits / T, times T^2, averaged over tokens;
+ ``lm_weight`` x next-token cross-entropy; + ``hidden_weight`` x (1 - cosine) between the teacher's
last hidden state and a learned linear projection of the student's (trained with the student, never
saved into its HF checkpoint). The teacher is frozen and in eval mode: a full copy on every rank, or
sharded as a ZeRO-3 engine without optimizer (``teacher_zero3``)::

    <run>/student/               the distilled student (HF checkpoint + the run's tokenizer)
    distill/train_log.jsonl      one line a step (loss, kl, lm, hidden, lr ...)
    distill/metrics.json         val KL and LM loss before/after, world size, hosts ... (written last)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig

from climb_hpc.estimate import Inputs, Ledger, Work, model_dims, train_flops, training_mem_gb
from climb_hpc.minitron import PhaseFiles
from climb_hpc.minitron.correct import _m, load_hf, plain, seed_of, tokenizer_info
from climb_hpc.minitron.engine import Forward, Teacher
from climb_hpc.stage import Resources, Stage

if TYPE_CHECKING:
    from climb_hpc.minitron.engine import Phase
    from climb_hpc.rundir import RunDir

NAME = "distill"


class DistillObjective:
    """KL(teacher || student) (+ LM, + hidden cosine): the teacher's last hidden states come from its decoder without
    gradients; the student's ``Trainable`` turns both into the terms, chunk by chunk (``losses.distill_sums``)."""

    def __init__(self, teacher: Any, temperature: float, lm_weight: float, hidden_weight: float, teacher_hidden: int):
        self.teacher, self.t = teacher, float(temperature)
        self.lm_weight, self.hidden_weight = float(lm_weight), float(hidden_weight)
        self.proj_to: Optional[int] = int(teacher_hidden) if self.hidden_weight > 0 else None

    def _terms(self, fwd: Forward, seqs: torch.Tensor, with_lm: bool) -> dict[str, torch.Tensor]:
        x = seqs[:, :-1]
        model = self.teacher.module if hasattr(self.teacher, "module") else self.teacher  # a ZeRO-3 engine's module
        with torch.no_grad():
            hidden = model.model(input_ids=x).last_hidden_state
        return fwd(x, seqs[:, 1:], Teacher(hidden, model.get_output_embeddings()), self.t, with_lm)

    def loss(self, fwd: Forward, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self._terms(fwd, seqs, with_lm=True)  # the LM term is logged even at lm_weight 0 (same chunks)
        loss = terms["kl"]
        if self.lm_weight:
            loss = loss + self.lm_weight * terms["lm"]
        if "hidden" in terms:
            loss = loss + self.hidden_weight * terms["hidden"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}

    def evaluate(self, fwd: Forward, seqs: torch.Tensor) -> dict[str, tuple[float, float]]:
        n = float(seqs[:, 1:].numel())
        return {k: (float(v) * n, n) for k, v in self._terms(fwd, seqs, with_lm=True).items()}


@dataclass(frozen=True)
class Outputs(PhaseFiles):
    """What distill writes: the student ``<run>/student/`` (an HF checkpoint), its logs under ``distill/``."""

    student: Path


def outputs(rd: RunDir) -> Outputs:
    return Outputs(rd.path / NAME, rd.path / "student")


def reads(cfg: DictConfig) -> tuple[str, ...]:
    """The run's tokenizer; the mixed dataset, the corrected teacher and the pruned student unless given."""
    d = _m(cfg).distill
    pruned = not d.get("student") and (not d.get("student_config") or "prune" in cfg.pipeline.stages)
    return ("tokenize", *(() if d.get("data") else ("mix",)), *(() if d.get("teacher") else ("correct",)),
            *(("prune",) if pruned else ()))


def teacher_path(cfg: DictConfig, rd: RunDir) -> Path:
    from climb_hpc.minitron.correct import outputs as correct_outputs

    given = _m(cfg).distill.get("teacher")
    p = Path(given) if given else correct_outputs(rd).teacher
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"distill: no teacher at {p}: run the correct stage or set minitron.distill.teacher")
    return p


def student_source(cfg: DictConfig, rd: RunDir) -> tuple[str, Any]:
    """("path", folder) of an HF student, or ("config", dims) when the default folder is missing and
    ``student_config`` is set (tests, and runs before the prune stage exists)."""
    d = _m(cfg).distill
    if d.get("student"):
        p = Path(d.student)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"minitron.distill.student={p} is not an HF checkpoint")
        return "path", p
    from climb_hpc.minitron.prune import outputs as prune_outputs

    p = prune_outputs(rd).student_pruned
    if (p / "config.json").is_file():
        return "path", p
    if d.get("student_config"):
        return "config", d.student_config
    raise FileNotFoundError(f"distill: no student: {p} is missing (run the prune stage), or set "
                            "minitron.distill.student to an HF checkpoint or minitron.distill.student_config")


def load_teacher(path: Path, s: dict[str, Any]) -> Any:
    """The frozen teacher in eval mode: a plain module, or a ZeRO-3 engine without optimizer."""
    from climb_hpc.minitron import ds

    zero3 = ds.inference_config(s) if s.get("teacher_zero3") else None
    with ds.zero3_construction(zero3):  # sharded as it is built and loaded: no rank holds the whole teacher
        teacher = load_hf(path, ds.model_dtype(s))
    teacher.requires_grad_(False)  # frozen: no gradients, no optimizer state
    teacher.eval()
    if zero3 is not None:
        import deepspeed

        teacher, *_ = deepspeed.initialize(model=teacher, config=zero3)
        teacher.eval()
    elif ds.on_gpu(s):
        teacher = teacher.to(torch.device("cuda", torch.cuda.current_device()))
    return teacher


def distill_phase(cfg: DictConfig, rd: RunDir) -> Phase:
    from climb_hpc.corpus.tokenize import tokenizer_dir
    from climb_hpc.minitron import ds
    from climb_hpc.minitron.data import flat_data
    from climb_hpc.minitron.engine import Phase, phase_seed
    from climb_hpc.proxy.model import build_model

    s = plain(_m(cfg).distill)
    seed = phase_seed(seed_of(cfg), NAME)
    tpath = teacher_path(cfg, rd)
    teacher = load_teacher(tpath, s)
    tconfig = teacher.module.config if hasattr(teacher, "module") else teacher.config
    kind, where = student_source(cfg, rd)
    if kind == "path":
        def build() -> Any:
            return load_hf(where, ds.model_dtype(s))
    else:
        info = tokenizer_info(rd)

        def build() -> Any:
            return build_model(where, info["vocab_size"], info["eos_id"], int(s["seq_len"]), seed)

    objective = DistillObjective(teacher, float(s["temperature"]), float(s["lm_weight"]),
                                 float(s["hidden_weight"]), int(tconfig.hidden_size))

    def checked() -> Any:
        student = build()
        if student.config.vocab_size != tconfig.vocab_size:
            raise ValueError(f"student vocabulary {student.config.vocab_size} != teacher's {tconfig.vocab_size}")
        return student

    return Phase(
        name=NAME, section=s, work=outputs(rd).dir, model_dir=outputs(rd).student, build=checked,
        data=lambda n: flat_data(rd, s.get("data"), int(s["seq_len"]), n, seed, int(s["val_tokens"]),
                                 str(s["text_field"])),
        objective=objective, seed=seed, tokenizer_dir=tokenizer_dir(rd),
        info={"teacher": str(tpath), "student": str(where) if kind == "path" else "student_config",
              "temperature": objective.t, "lm_weight": objective.lm_weight, "hidden_weight": objective.hidden_weight,
              "teacher_zero3": bool(s.get("teacher_zero3"))})


def run(cfg: DictConfig, rd: RunDir, task: int) -> None:
    from climb_hpc.minitron import ds
    from climb_hpc.minitron.engine import run_phase
    from climb_hpc.rundir import read_json
    from climb_hpc.training import torch_threads

    s = _m(cfg).distill
    if read_json(outputs(rd).metrics) is not None and outputs(rd).student.exists():
        return
    with ds.distributed(s), torch_threads(int(s.get("cpus") or 1)):
        run_phase(distill_phase(cfg, rd))


# ---------------------------------------------------------------- its cost, for `climb-hpc plan`


def estimate(cfg: DictConfig, x: Inputs, led: Ledger) -> Work:
    """The student's training plus the teacher's forward pass on every token; a rank holds its ZeRO share of the
    student's AdamW state and the whole teacher (fp32) unless ``teacher_zero3``."""
    from climb_hpc.minitron.engine import num_steps
    from climb_hpc.minitron.sizes import student, teacher
    from climb_hpc.stage import stage_resources

    d = _m(cfg).distill
    t_dims, _ = teacher(cfg, x.vocab, led)
    s_dims = student(cfg, t_dims, led)
    if d.get("teacher"):
        t_dims = model_dims(d.teacher, "minitron.distill.teacher", t_dims, led, "distill teacher")
    seq = int(d.seq_len)
    tokens = led.use("distill tokens", num_steps(d) * int(d.global_batch_size) * seq,
                     "minitron.distill.tokens, rounded up to whole steps")
    led.use("distill FLOP a token", "train(student) + forward(teacher)", "train_flops_per_token: 6N + attention; / 3")
    ranks = stage_resources(cfg, STAGE).world_size
    teacher_gb = training_mem_gb(t_dims, 1, 0) / 4 / (ranks if d.teacher_zero3 else 1)  # weights only
    return Work("distillation", [1], flop=(train_flops(s_dims, seq) + train_flops(t_dims, seq) / 3) * tokens,
                model=True, mem_gb=training_mem_gb(s_dims, ranks, int(d.zero_stage)) + teacher_gb)


STAGE = Stage(name=NAME, run=run, num_tasks=lambda cfg, rd: 1, section="minitron.distill",
              resources=lambda cfg: Resources.from_config(_m(cfg).distill), checkpointable=True,
              reads=reads, outputs=outputs, estimate=estimate)
