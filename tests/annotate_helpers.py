"""What the annotation tests share: byte reads for file equality, a crash injected into the
backbone, and a two-process annotation job started as torchrun would start it."""

import os
import socket

import torch
from detectron2.data import MetadataCatalog


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def crash_after(model, num_backbone_calls):
    """Make ``model`` raise "simulated crash" once its backbone has run ``num_backbone_calls``
    times. Returns (the hook's handle, the list that counts the backbone calls)."""
    calls = []

    def hook(module, inputs):
        calls.append(1)
        if len(calls) > num_backbone_calls:
            raise RuntimeError("simulated crash")

    return model.backbone.register_forward_pre_hook(hook), calls


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(repo, **variables):
    """The environment of a child process that runs this checkout's tools: the current one, with
    ``repo`` put in front of PYTHONPATH (kept, not replaced: packages installed into a target
    folder are found through it) and ``variables`` set."""
    search_path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=search_path, **variables)


def torchrun_env(rank, world_size, port):
    """The variables torchrun gives each worker of a one-machine job on localhost."""
    return dict(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def spawn_annotation(worker, model, dataset_names, out, tmp_path, world_size=2):
    """Run ``worker(rank, world_size, port, state_path, files, dataset_names, out)`` in
    ``world_size`` new processes, where ``state_path`` holds ``model``'s weights and ``files``
    the (json_file, image_root) of each registered dataset, for the worker to register again."""
    state_path = str(tmp_path / "model.pth")
    torch.save(model.state_dict(), state_path)
    files = [
        (MetadataCatalog.get(n).json_file, MetadataCatalog.get(n).image_root) for n in dataset_names
    ]
    torch.multiprocessing.spawn(
        worker,
        args=(world_size, free_port(), state_path, files, list(dataset_names), out),
        nprocs=world_size,
    )
