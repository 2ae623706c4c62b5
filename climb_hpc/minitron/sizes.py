"""The model shapes the Minitron stages' estimates use (``Stage.estimate``, ``climb_hpc.estimate``): the teacher
and the student, read from their config.json where readable on this machine, else from the config."""

from __future__ import annotations

from omegaconf import DictConfig

from climb_hpc.estimate import Ledger, dims_of, dims_text, matmul_params, model_dims


def teacher(cfg: DictConfig, vocab: int, led: Ledger) -> tuple[dict[str, int], bool]:
    """(teacher dims, whether the run pretrains it first: the built-in tiny teacher)."""
    t = cfg.minitron.teacher
    if t.get("path"):
        fb = dims_of(cfg.plan.models.teacher)
        return model_dims(t.path, "minitron.teacher.path", fb, led, "teacher"), False
    dims = dims_of(t.model, vocab)
    led.use("teacher matmul params", matmul_params(dims),
            f"minitron.teacher.model (the built-in tiny teacher, pretrained first): {dims_text(dims)}")
    return dims, True


def student(cfg: DictConfig, teacher_dims: dict[str, int], led: Ledger) -> dict[str, int]:
    """The distilled student: distill.student / student_config, else the teacher after minitron.prune's targets."""
    d, p = cfg.minitron.distill, cfg.minitron.prune
    if d.get("student_config") and not d.get("student"):
        dims = dims_of(d.student_config, teacher_dims["vocab_size"])
        led.use("student matmul params", matmul_params(dims), f"minitron.distill.student_config: {dims_text(dims)}")
        return dims
    pruned = dict(teacher_dims)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        if p.get(k):
            pruned[k] = int(p[k])
    pruned["num_hidden_layers"] -= int((p.get("depth") or {}).get("drop") or 0)
    if d.get("student"):
        return model_dims(d.student, "minitron.distill.student", pruned, led, "student")
    led.use("student matmul params", matmul_params(pruned), f"the teacher pruned by minitron.prune: {dims_text(pruned)}")
    return pruned
