"""torch.distributed / DeepSpeed rendezvous variables for a multi-rank task.

``slurm_env`` derives RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT from Slurm's own
variables inside an srun step (one process per task); ``local_env`` gives the same for ranks that
the local executor starts as subprocesses. Stages just call ``torch.distributed.init_process_group``
with ``init_method="env://"`` and never see which one set them.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping

# A port derived from the job id, so that two jobs sharing a node do not collide.
_PORT_BASE, _PORT_SPAN = 20000, 20000


def master_port(job_id: str | int) -> int:
    return _PORT_BASE + int(str(job_id).split("_")[0]) % _PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a Slurm nodelist such as ``node[1-2],gpu07``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    from submitit.slurm.slurm import _parse_node_list  # same expansion, in Python

    return _parse_node_list(nodelist)[0]


def slurm_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Rendezvous variables from inside an srun step. Raises KeyError outside one."""
    job_id = environ.get("SLURM_JOB_ID") or environ["SLURM_JOBID"]
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        "NODE_RANK": environ.get("SLURM_NODEID", "0"),
        "MASTER_ADDR": first_host(environ["SLURM_JOB_NODELIST"]),
        "MASTER_PORT": str(master_port(job_id)),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "NODE_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
