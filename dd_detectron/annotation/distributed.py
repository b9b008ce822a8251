"""
Multi-process runs started by ``torchrun`` (CPU with gloo, or GPU with NCCL).

detectron2's ``launch`` spawns its own processes and, in detectron2 0.6, requires CUDA. Under
``torchrun`` the processes exist already; this initialises their process group from torchrun's
environment and creates the per-machine group that detectron2's ``comm.get_local_rank`` /
``get_local_size`` read (``launch`` would have created it).
"""
import logging
import os

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["launched_by_torchrun", "init_distributed_from_env", "shutdown_distributed"]

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (it sets these variables for every worker)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def init_distributed_from_env(backend: str = None) -> None:
    """Initialise torch.distributed from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    Args:
        backend: "gloo" or "nccl"; default NCCL when CUDA is available, else gloo.
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    if hasattr(comm, "create_local_process_group"):  # newer detectron2
        comm.create_local_process_group(local_size)
    else:  # detectron2 0.6: launch() sets this module attribute itself
        machine = rank // local_size
        for i in range(world_size // local_size):
            group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
            if i == machine:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    logger.info("Process %d of %d (local %d of %d), backend %s.", rank, world_size, local_rank, local_size, backend)


def shutdown_distributed() -> None:
    """Leave the process group together and tear it down.

    The barrier keeps a rank that is done from exiting while rank 0 still merges and writes.
    Torch's own teardown of a gloo group at interpreter exit can still abort a finished process
    (SIGABRT, "terminate called without an active exception"), so tools/annotate_net.py exits
    with os._exit after this.
    """
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
