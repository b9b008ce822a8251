"""Writing files so that a reader, or a rerun after a crash, never sees a half-written one."""
import os
from typing import Union

__all__ = ["write_atomic"]


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``.

    The temporary name carries the process id, so processes writing the same target (e.g. the
    ranks of a job) never share a temporary file; the rename is atomic on POSIX file systems.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed: leave no partial file behind
            os.remove(tmp)
