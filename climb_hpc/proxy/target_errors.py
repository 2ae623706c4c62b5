"""The error of a wrong target config or target file (its own module: targets.py and lm_eval_target.py raise it)."""


class TargetError(ValueError):
    """The target config or its file is wrong; the message says what to fix."""
