"""The run folder: all pipeline state lives here, nowhere else.

    <run_dir>/config.yaml            resolved config, written once
    <run_dir>/manifest.json          version, hosts, per-stage task counts and completion times
    <run_dir>/.lock                  held (flock) by the one controller working on this folder
    <run_dir>/<stage>/...            a stage's outputs
    <run_dir>/_done/<stage>/<task>   completion markers, written LAST: marker exists => outputs complete
    <run_dir>/_done/<stage>/_stage   the stage finished (all tasks + finalize)
    <run_dir>/_failed/<stage>/<task> the last failure of a task (error, log path); cleared on success
    <run_dir>/logs/<stage>/          one log per task
    <run_dir>/_tmp/<stage>/<task>/   a running task's temporaries (emptied when the task starts again)

Every file is written to a temporary name in the same folder and renamed, so a killed writer leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from climb_hpc.errors import UserError

PathLike = Union[str, os.PathLike]
STAGE_MARKER = "_stage"
STAGE_FAILURE = "_stage"  # _failed/<stage>/_stage: the stage itself (planning, driving, finalize) failed


class RunDirUnusable(UserError):
    """The run folder cannot be created or written."""


class RunDirLocked(UserError):
    """Another controller holds the run folder."""


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


#: Where this process writes its temporaries: ``<run>/_tmp/<stage>/<task>/r<rank>`` inside a task (see
#: :func:`task_temps`), so that a killed attempt's leftovers are removed when the task runs again; None:
#: next to the target, as hidden ``.<name>.<pid>.<n>.tmp`` files (the controller, tests, tools).
_TMP_ENV = "CLIMB_HPC_TMP_DIR"
_counter = itertools.count()


def _temp_name(path: Path) -> Path:
    """A temporary name for ``path``, on the same filesystem (so that ``os.replace`` is atomic)."""
    unique = f"{os.getpid()}.{next(_counter)}"
    tmp_dir = os.environ.get(_TMP_ENV)
    if tmp_dir and os.path.isdir(tmp_dir) and os.stat(tmp_dir).st_dev == os.stat(path.parent).st_dev:
        return Path(tmp_dir) / f"{unique}.{path.name}"
    return path.with_name(f".{path.name}.{unique}.tmp")


@contextlib.contextmanager
def task_temps(run_dir: PathLike, stage: str, task: int, rank: int = 0) -> Iterator[Path]:
    """Inside: temporaries of atomic writes go to ``<run>/_tmp/<stage>/<task>/r<rank>``, which is emptied
    first (what a killed earlier attempt left) and removed on the way out."""
    d = Path(run_dir) / "_tmp" / stage / f"{task:05d}" / f"r{rank}"
    _remove(d)
    d.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(_TMP_ENV)
    os.environ[_TMP_ENV] = str(d)
    try:
        yield d
    finally:
        if previous is None:
            os.environ.pop(_TMP_ENV, None)
        else:
            os.environ[_TMP_ENV] = previous
        _remove(d)


def atomic_write(path: PathLike, data: Union[str, bytes]) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename.

    The file gets the mode a plain ``open`` would (0666 less the umask), so a run folder shared with a
    project group stays readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path (file or folder) for ``path``; rename it onto ``path`` on success.

    For writers that want a file name (pyarrow, torch.save, zarr): they write to the yielded path.
    An existing ``path`` is replaced; on error the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RunStateDamaged(UserError):
    """A file of the run folder's state is not what climb-hpc wrote (edited by hand, or damaged)."""


def read_json(path: PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError) as e:  # climb-hpc writes them atomically: not a killed writer
        raise RunStateDamaged(f"{path} is not valid JSON ({e}); it was edited or damaged outside climb-hpc. "
                              "Restore it, or delete it to have that step redone") from None


class RunDir:
    """Paths and state of one run folder. Cheap to construct; holds no open handles but the lock."""

    def __init__(self, path: PathLike):
        self.path = Path(os.path.expanduser(str(path))).resolve()
        self._lock_fd: Optional[int] = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log_dir(self, stage: str) -> Path:
        d = self.path / "logs" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def marker_dir(self, stage: str) -> Path:
        """``_done/<stage>``: the stage's completion markers (remove it to have every task run again)."""
        return self.path / "_done" / stage

    def failed_dir(self, stage: str) -> Path:
        return self.path / "_failed" / stage

    def jobs_file(self, stage: str) -> Path:
        """``_jobs/<stage>.json``: the Slurm jobs launched for the stage (``climb_hpc.scheduler.slurm``)."""
        return self.path / "_jobs" / f"{stage}.json"

    def tmp_dir(self, stage: str) -> Path:
        """``_tmp/<stage>``: its tasks' temporaries (:func:`task_temps`), removed when the stage completes."""
        return self.path / "_tmp" / stage

    def _marker(self, stage: str, task: Union[int, str]) -> Path:
        name = task if isinstance(task, str) else f"{task:05d}"
        return self.marker_dir(stage) / name

    def _failure(self, stage: str, task: int) -> Path:
        return self.failed_dir(stage) / f"{task:05d}"

    # ---- config and manifest
    def exists(self) -> bool:
        try:
            return self.config_path.exists()
        except OSError as e:  # a name too long, a path through a file ...
            raise RunDirUnusable(f"cannot use {self.path} as the run folder: {e.strerror}; choose another run_dir=") from None

    def save_config(self, cfg: DictConfig) -> None:
        atomic_write(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))

    def load_config(self) -> DictConfig:
        if not self.config_path.exists():
            raise FileNotFoundError(
                f"{self.path} is not a climb-hpc run folder (no config.yaml). "
                f"Start one with: climb-hpc run run_dir={self.path}"
            )
        try:
            return OmegaConf.load(self.config_path)  # type: ignore[return-value]
        except Exception as e:  # yaml's and OmegaConf's parse errors
            raise RunStateDamaged(f"{self.config_path} cannot be read ({str(e).splitlines()[0]}); it was edited or "
                                  "damaged outside climb-hpc: restore it, or start a new run_dir=") from None

    def manifest(self) -> dict:
        return read_json(self.manifest_path, default={})

    def update_manifest(self, **fields: Any) -> dict:
        """Merge ``fields`` into the manifest, nested dicts too (only the controller writes it, under the lock)."""
        m = _merge(self.manifest(), fields)
        atomic_write_json(self.manifest_path, m)
        return m

    # ---- completion markers
    def is_done(self, stage: str, task: int) -> bool:
        return self._marker(stage, task).exists()

    def mark_done(self, stage: str, task: int, **info: Any) -> None:
        """Write the task's completion marker. Call only after every output is in place."""
        atomic_write_json(self._marker(stage, task), {"finished": time.time(), "host": socket.gethostname(), **info})
        with contextlib.suppress(FileNotFoundError):
            self._failure(stage, task).unlink()

    def done_tasks(self, stage: str) -> set[int]:
        """The tasks with a marker: ONE listing of the folder, no stat a task (the Slurm controller's poll)."""
        try:
            with os.scandir(self.marker_dir(stage)) as entries:
                return {int(e.name) for e in entries if e.name.isdigit()}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def marked_stages(self) -> list[str]:
        """Stages with a marker folder, sorted; a family's members as ``<family>/<member>`` (``proxy/climb_r1``)."""
        root = self.path / "_done"
        out: list[str] = []
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            members = sorted(q.name for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
            out += [f"{p.name}/{m}" for m in members] or ([p.name] if p.is_dir() else [])
        return out

    def stage_complete(self, stage: str) -> bool:
        return self._marker(stage, STAGE_MARKER).exists()

    def mark_stage_complete(self, stage: str, **info: Any) -> None:
        atomic_write_json(self._marker(stage, STAGE_MARKER), {"finished": time.time(), **info})
        with contextlib.suppress(FileNotFoundError):
            (self.failed_dir(stage) / STAGE_FAILURE).unlink()

    def mark_stage_failed(self, stage: str, step: str, error: str, user_error: bool) -> None:
        """The stage's own work (``step``: prepare, drive, finalize) raised: `status` shows it failed."""
        atomic_write_json(self.failed_dir(stage) / STAGE_FAILURE,
                          {"time": time.time(), "step": step, "error": error, "user_error": user_error})

    def stage_failure(self, stage: str) -> Optional[dict]:
        return None if self.stage_complete(stage) else read_json(self.failed_dir(stage) / STAGE_FAILURE)

    def reset_stage(self, stage: str, outputs: Sequence[Path] = ()) -> None:
        """Forget a stage entirely: its markers, failures, recorded jobs, its folder ``<run>/<stage>`` and its
        other ``outputs`` (``climb_hpc.stage.output_roots``). For a stage that has not completed, whose config
        changed: its tasks run again from scratch."""
        for d in ("_done", "_failed", "_preempted", "_jobs", "_tmp"):
            _remove(self.path / d / stage)
        _remove(self.jobs_file(stage))
        _remove(self.path / stage)
        for p in outputs:
            _remove(p)

    def clear_stage(self, stage: str) -> None:
        """Forget a stage's completion (markers only); its tasks rerun and overwrite their outputs."""
        shutil.rmtree(self.marker_dir(stage), ignore_errors=True)

    # ---- failures
    def mark_preempted(self, stage: str, task: int) -> None:
        """The task saved its state on a preemption signal and wants to be requeued (hand launches)."""
        atomic_write_json(self.path / "_preempted" / stage / f"{task:05d}", {"time": time.time()})

    def mark_failed(self, stage: str, task: int, error: str, log: Optional[str] = None, user_error: bool = False) -> None:
        """The task's last failure; ``user_error``: caused by config or input (retrying cannot help)."""
        atomic_write_json(self._failure(stage, task),
                          {"time": time.time(), "error": error, "log": log, "user_error": user_error})

    def failures(self, stage: str) -> dict[int, dict]:
        d = self.failed_dir(stage)
        if not d.is_dir():
            return {}
        done = self.done_tasks(stage)
        out = {}
        for p in d.iterdir():
            if p.name.isdigit() and int(p.name) not in done:
                out[int(p.name)] = read_json(p, default={})
        return out

    # ---- the controller lock
    def acquire_lock(self) -> None:
        """Take the exclusive controller lock, or raise ``RunDirLocked`` saying who holds it."""
        lock = self.path / ".lock"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # not writable, a file in the way, a name too long, a read-only filesystem ...
            raise RunDirUnusable(f"cannot use {self.path} as the run folder: {e.strerror}; choose another "
                                 "run_dir= (a folder you can write to)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read_text().strip() or "unknown"
            os.close(fd)
            raise RunDirLocked(
                f"run folder {self.path} is in use by another controller ({holder}). "
                "Wait for it to finish or stop it; `climb-hpc status` shows progress meanwhile."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunDir:
        self.acquire_lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_lock()
