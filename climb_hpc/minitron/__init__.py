"""Minitron on plain HF Llama models: teacher correction and knowledge distillation on DeepSpeed ZeRO.

    ds.py       DeepSpeed helpers: CPU workarounds, the ZeRO config, sharded construction, the HF checkpoint written a
                parameter at a time, the preemption vote
    data.py     training windows (mixed dataset, a token store or JSONL) planned by the seed; a validation slice
    losses.py   LM cross-entropy and forward KL from the final hidden states, a chunk of tokens at a time
    engine.py   the training loop shared by both phases: checkpoint/resume, logs, the final HF checkpoint
    correct.py  stage ``correct``: (pretrain a tiny teacher when none is given, then) fine-tune it on the mix
    importance.py, prune.py   stages ``importance`` (resumable piece by piece) and ``prune``
    distill.py  stage ``distill``: KL(teacher || student) (+ LM, + hidden-state cosine) into the student
    memory.py   the peak memory of a rank, term by term (``climb-hpc preflight``)
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PhaseFiles:
    """A training phase's work folder, as ``engine.py`` writes it (the outputs of correct and distill)."""

    dir: Path

    @property
    def train_log(self) -> Path:
        return self.dir / "train_log.jsonl"  # one line a step (rank 0)

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"  # written last: the phase is finished
