"""Cooperative preemption, independent of Slurm.

The scheduler turns the preemption signal (submitit's USR2 on Slurm) into a flag. A long task polls
``requested()`` at safe points (step boundaries), saves its state, and raises ``Preempted``; the
scheduler then requeues it, and the rerun resumes from the saved state. Multi-rank tasks must agree
on the flag first (all-reduce it, as Megatron does) so that every rank saves at the same step.
"""

from __future__ import annotations

import signal
import threading

_flag = threading.Event()


class Preempted(Exception):
    """Raised by a task after it saved its state because a preemption was requested."""


def requested() -> bool:
    return _flag.is_set()


def request(*_args: object) -> None:
    """Mark a preemption as requested; usable directly as a signal handler."""
    _flag.set()


def clear() -> None:
    _flag.clear()


def install_handler(signum: int = signal.SIGUSR2) -> object:
    """Route ``signum`` to the flag; returns the previous handler so the caller can chain to it."""
    previous = signal.getsignal(signum)
    signal.signal(signum, request)
    return previous
