"""Writing files so that a reader, or a rerun after a crash, never sees a half-written one."""

import contextlib
import os
import socket
from typing import IO, Iterator, Union

__all__ = ["atomic_write", "write_atomic", "unique_temp_name"]


def unique_temp_name(path: str) -> str:
    """A temporary name next to ``path``, unique across the processes of every machine.

    Host and process id: processes writing the same target on a shared filesystem (the ranks
    of a job on several machines, where process ids repeat) never share a temporary file.
    """
    return f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit, flush it to disk (fsync) and
    rename it over ``path`` (atomic on POSIX filesystems). On an error no file is left behind
    and ``path`` keeps its old content.

        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    Args:
        path: the file to write.
        mode: "w" (text) or "wb" (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    tmp = unique_temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed: leave no partial file behind
            os.remove(tmp)


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write a whole str or bytes with ``atomic_write``."""
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
