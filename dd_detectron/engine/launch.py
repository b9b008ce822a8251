"""
How every tool starts its processes: detectron2's ``launch`` spawns them (``--num-gpus``,
``--num-machines``), or, when ``torchrun`` started them already, each joins the job from
torchrun's environment. ``launch_or_join`` picks the right one, with the same process-group
timeout on both paths.

On the torchrun path the backend and the device follow ``MODEL.DEVICE``: gloo on the CPU (even
when GPUs are visible), NCCL on CUDA with one GPU per local process.
"""

import datetime
import functools
import logging
import os
import sys
from typing import Callable

import torch
import torch.distributed as dist
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

__all__ = [
    "PROCESS_GROUP_TIMEOUT",
    "launch_or_join",
    "launched_by_torchrun",
    "init_distributed_from_env",
    "shutdown_distributed",
    "use_gloo_group_timeout",
]

logger = logging.getLogger(__name__)

# How long a process waits at a collective operation for the others. Ranks wait there for the
# slowest rank: at the end of an annotation run for the slowest shard and then for rank 0's
# merge of every chunk and the label AP evaluations (hours on 100k+ images), in training for a
# slow evaluation. Torch's default (10 min for NCCL, 30 min in detectron2's launch) kills such a
# run at its very end. A process that dies is still noticed at once: torchrun and detectron2's
# launch stop the job when one of its processes exits with an error.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=12)


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (it sets these variables for every worker)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def init_distributed_from_env(
    device: str, timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT
) -> None:
    """Join the process group of a torchrun job from torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and create the per-machine group
    that detectron2's ``comm.get_local_rank`` / ``get_local_size`` read (``launch`` would have
    created it).

    Args:
        device: MODEL.DEVICE. "cpu": gloo, no GPU touched; "cuda": NCCL, and local process i
            uses GPU i.
        timeout: of every collective operation (see PROCESS_GROUP_TIMEOUT).

    Raises:
        RuntimeError: a CUDA device with more local processes than visible GPUs (before any
            process waits for another).
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    device_type = torch.device(device).type
    if device_type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_size > visible:
            raise RuntimeError(
                f"torchrun started {local_size} local processes with MODEL.DEVICE "
                f"{device!r}, but {visible} GPUs are visible: one GPU per process is needed. Use "
                f"--nproc_per_node {visible} (or fewer), or MODEL.DEVICE cpu."
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
    )
    if hasattr(comm, "create_local_process_group"):  # newer detectron2
        comm.create_local_process_group(local_size)
    else:  # detectron2 0.6: launch() sets this module attribute itself
        machine = rank // local_size
        for i in range(world_size // local_size):
            group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
            if i == machine:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    logger.info(
        "Process %d of %d (local %d of %d), backend %s, device %s.",
        rank,
        world_size,
        local_rank,
        local_size,
        backend,
        device,
    )


def use_gloo_group_timeout(timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT) -> None:
    """Give detectron2's object collectives the process-group timeout too. Call it in every
    process of a job, after the job's process group exists.

    detectron2 (0.6 and later) gathers Python objects (``comm.gather`` / ``all_gather``, as the
    evaluators of ``inference_on_dataset`` do at the end, waiting for the slowest shard) over a
    gloo group that it creates itself, with torch's default timeout (30 min). On a gloo job that
    group is the job's own, which has our timeout; on an NCCL job, this makes it one that has.
    """
    if not dist.is_initialized() or comm.get_world_size() == 1 or dist.get_backend() == "gloo":
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    # Divergence from detectron2: its cached group creator, replaced by one with our timeout.
    comm._get_global_gloo_group = lambda: group


def _run_in_job(main: Callable, timeout: datetime.timedelta, args) -> None:
    """A process of a job started by detectron2's launch: ``main(args)`` with the timeouts."""
    use_gloo_group_timeout(timeout)
    main(args)


def shutdown_distributed() -> None:
    """Leave the process group together and tear it down.

    The barrier keeps a rank that is done from exiting while rank 0 still merges and writes.
    """
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def _exit_now() -> None:
    """Exit with status 0 without the interpreter's teardown, which can still abort a finished
    gloo process (SIGABRT, "terminate called without an active exception") and so fail a
    complete run. Everything is written by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch_or_join(
    main: Callable, args, *, device: str, timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT
) -> None:
    """Run ``main(args)`` in every process of the job.

    Under torchrun: join its job (``init_distributed_from_env``), run main, leave together and
    exit (status 0; an error in main leaves with it, and torchrun stops the other processes).
    Otherwise: detectron2's ``launch`` with args.num_gpus, num_machines, machine_rank, dist_url.

    Args:
        main: the tool's main function.
        args: its parsed arguments (detectron2's default_argument_parser).
        device: MODEL.DEVICE of the tool's config.
        timeout: the process-group timeout, on both paths.
    """
    if launched_by_torchrun():
        init_distributed_from_env(device, timeout)
        _run_in_job(main, timeout, args)
        shutdown_distributed()  # only on success: after an error, torchrun stops the other ranks
        _exit_now()
    else:
        detectron2_launch(
            functools.partial(_run_in_job, main, timeout),
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timeout,
        )
