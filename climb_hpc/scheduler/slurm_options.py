"""Slurm options as validated data: cluster config + a stage's resources -> submitit parameters.

Every value is checked here, before anything is submitted, so a typo fails with a message that names
the key; then ``sbatch --test-only`` asks the cluster itself (unknown partition, account, QOS,
reservation, impossible node counts) without queueing anything. submitit shell-quotes every value
it writes into the script; the checks below also refuse newlines and shell syntax outright.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from climb_hpc.config import ConfigError
from climb_hpc.stage import Resources

# names Slurm accepts for partitions, accounts, QOS, reservations (comma lists allowed)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
# node features: names joined by & | , with [ ] ( ) and *count
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-&|,\[\]()*]+$")
_FLAG = re.compile(r"^[a-z][a-z0-9\-]*$")
_SAFE_VALUE = re.compile(r"^[^\s'\"`$;\\<>]*$")
# sbatch's long options (Slurm 22.05-24.11 src/common/slurm_opt.c); those `sbatch --help` prints are added at
# run time. sbatch resolves an option as getopt_long does: an exact name, else the ONE name it abbreviates
# (--part is --partition); a prefix of several names is refused as ambiguous.
SBATCH_OPTIONS = frozenset("""
account acctg-freq array batch bb bbf begin chdir cluster-constraint clusters comment constraint container
container-id contiguous core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot
dependency distribution error exclude exclusive export export-file extra extra-node-info get-user-env gid
gpu-bind gpu-freq gpus gpus-per-node gpus-per-socket gpus-per-task gres gres-flags help hint hold ignore-pbs
input job-name kill-on-invalid-dep licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu
mincpus network nice no-kill no-requeue nodefile nodelist nodes ntasks ntasks-per-core ntasks-per-gpu
ntasks-per-node ntasks-per-socket open-mode output overcommit oversubscribe parsable partition power prefer
priority profile propagate qos quiet reboot requeue reservation signal sockets-per-node spread-job switches
test-only thread-spec threads-per-core time time-min tmp tres-per-task uid usage use-min-nodes verbose version
wait wait-all-nodes wckey wrap
""".split())
# what climb-hpc sets or relies on (the job's shape, its logs, requeueing, the environment, how sbatch
# answers): an extra option may not change them, under any name sbatch reads as theirs
_OWNED = {"array", "output", "error", "input", "signal", "job-name", "wrap", "open-mode", "nodes", "ntasks",
          "ntasks-per-node", "cpus-per-task", "time", "partition", "account", "qos", "reservation", "constraint",
          "mem", "mem-per-cpu", "mem-per-gpu", "gpus", "gpus-per-node", "gpus-per-task", "gres", "requeue",
          "no-requeue", "dependency", "export", "export-file", "chdir", "parsable", "quiet", "test-only", "wait",
          "hold", "help", "usage", "version"}
_CONFIG_KEY = {"partition": "cluster.partition", "account": "cluster.account", "qos": "cluster.qos",
               "reservation": "cluster.reservation", "constraint": "cluster.constraint", "mem": "cluster.mem_gb",
               "time": "cluster.time_min", "signal": "cluster.signal_delay_s",
               "array": "cluster.array_parallelism"}


def _known_options() -> frozenset[str]:
    try:
        out = subprocess.run(["sbatch", "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return SBATCH_OPTIONS | set(re.findall(r"--([a-z][a-z0-9-]*)", out))


def resolve_sbatch_option(flag: str, known: frozenset[str] = SBATCH_OPTIONS) -> str:
    """The sbatch option that ``--flag`` means (exact, or the one option it abbreviates), or ConfigError."""
    if flag in known:
        return flag
    matches = sorted(o for o in known if o.startswith(flag))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"cluster.extra_sbatch.{flag}: sbatch reads --{flag} as ambiguous ({', '.join(matches[:6])}"
                          f"{' ...' if len(matches) > 6 else ''}); write the option's full name")
    raise ConfigError(f"cluster.extra_sbatch.{flag}: sbatch has no option --{flag}")


def _name(cfg: DictConfig, key: str, pattern: re.Pattern = _NAME) -> Optional[str]:
    value = cfg.get(key)
    if value is None or value == "":
        return None
    value = str(value)
    if not pattern.match(value):
        raise ConfigError(f"cluster.{key}={value!r} is not a valid Slurm {key} "
                          f"(allowed: letters, digits, '_', '.', '-'{', & | [ ] ( ) *' if pattern is _CONSTRAINT else ', comma lists'})")
    return value


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}")
    return value


def submitit_parameters(cluster: DictConfig, res: Resources, job_name: str, checkpointable: bool,
                        tasks_per_element: int = 1) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` keywords for one stage, or ConfigError.

    An element that runs ``tasks_per_element`` tasks one after another gets their time limits together, at most
    ``cluster.element_max_time_min`` (never less than one task's): a partition would hold a longer job pending
    for ever, and an element that runs out of time is requeued and goes on at its first unfinished task.

    srun is used only where it is needed: to start several ranks, or to deliver the preemption
    signal (Slurm signals job steps, not the batch shell) to a checkpointable task. A plain one-process
    task runs straight in the batch script, one job step fewer; preempted, Slurm requeues it and the
    idempotent task runs again."""
    time_min = _positive_int(cluster.get("time_min") or res.time_min, "cluster.time_min (or the stage's time_min)")
    signal_delay = cluster.signal_delay_s
    if isinstance(signal_delay, bool) or not isinstance(signal_delay, int) or signal_delay < 0:
        raise ConfigError(f"cluster.signal_delay_s={signal_delay!r}: must be an integer >= 0 (seconds)")
    if signal_delay >= time_min * 60:
        raise ConfigError(f"cluster.signal_delay_s={signal_delay} is not shorter than the time limit "
                          f"({time_min} min): the preemption signal would come before the job starts")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": min(time_min * _positive_int(tasks_per_element, "cluster.tasks_per_element"),
                    max(time_min, int(cluster.get("element_max_time_min") or time_min))),
        "nodes": _positive_int(res.nodes, "nodes"),
        "ntasks_per_node": _positive_int(res.tasks_per_node, "tasks_per_node"),
        "cpus_per_task": _positive_int(res.cpus, "cpus"),
        "signal_delay_s": signal_delay,
        "array_parallelism": _positive_int(cluster.array_parallelism, "cluster.array_parallelism"),
        "stderr_to_stdout": True,  # one log per task
        "use_srun": res.world_size > 1 or checkpointable,
    }
    if res.gpus:
        params["gpus_per_node"] = _positive_int(res.gpus, "gpus", 0) * res.tasks_per_node
    mem = res.mem_gb if res.mem_gb is not None else cluster.get("mem_gb")
    if mem is not None:
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0:
            raise ConfigError(f"mem_gb={mem!r}: must be a positive number of GB")
        params["mem"] = f"{int(mem)}GB" if float(mem).is_integer() else f"{int(mem * 1024)}MB"
    for key in ("partition", "account", "qos"):
        if (v := _name(cluster, key)) is not None:
            params[key] = v
    if (v := _name(cluster, "constraint", _CONSTRAINT)) is not None:
        params["constraint"] = v
    extra: dict[str, Any] = {}
    if (v := _name(cluster, "reservation")) is not None:
        extra["reservation"] = v
    extra_cfg = cluster.get("extra_sbatch")
    known = _known_options() if extra_cfg else SBATCH_OPTIONS
    for flag, value in (OmegaConf.to_container(extra_cfg) if extra_cfg else {}).items():  # type: ignore[union-attr]
        flag = str(flag)
        if not _FLAG.match(flag):
            raise ConfigError(f"cluster.extra_sbatch: {flag!r} is not an sbatch long option name (e.g. mail-type)")
        option = resolve_sbatch_option(flag, known)
        if option in _OWNED:
            means = f"--{flag} (sbatch reads it as --{option})" if option != flag else f"--{flag}"
            use = f"set {_CONFIG_KEY[option]}" if option in _CONFIG_KEY else "use the cluster / stage_resources keys"
            raise ConfigError(f"cluster.extra_sbatch.{flag}: climb-hpc sets {means} itself (or relies on it); {use} instead")
        if not isinstance(value, (str, int, float, bool)) or not _SAFE_VALUE.match(str(value)):
            raise ConfigError(f"cluster.extra_sbatch.{flag}={value!r}: values may not contain spaces, quotes or "
                              "shell characters")
        extra[flag] = value
    if extra:
        params["additional_parameters"] = extra
    setup = list(cluster.get("setup") or [])
    if any("\n" in str(line) for line in setup):
        raise ConfigError("cluster.setup: one shell line per list item (no embedded newlines)")
    if setup:
        params["setup"] = [str(line) for line in setup]
    return params


def max_array_size(cluster: DictConfig) -> int:
    """The largest array this cluster accepts: config, else MaxArraySize from ``scontrol show config``."""
    if cluster.get("max_array_size"):
        return _positive_int(cluster.max_array_size, "cluster.max_array_size")
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001  # Slurm's default


def test_only(script: str) -> Optional[str]:
    """Ask Slurm whether it would accept this batch script (``sbatch --test-only``); the error, or None."""
    try:
        p = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "sbatch not found: is this a Slurm login node? (set SLURM_CONF, or use cluster=local)"
    except subprocess.TimeoutExpired:
        return "sbatch --test-only did not answer in 60 s: is slurmctld up?"
    if p.returncode != 0:
        return (p.stderr or p.stdout).strip()
    return None
