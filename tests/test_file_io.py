"""dd_detectron.utils.write_atomic: whole files or nothing."""

import os

import pytest

from dd_detectron.utils import write_atomic


def test_writes_text_and_bytes_and_replaces(tmp_path):
    path = str(tmp_path / "a.json")
    write_atomic(path, '{"x": 1}')
    assert open(path).read() == '{"x": 1}'
    write_atomic(path, b"\x89PNG")
    assert open(path, "rb").read() == b"\x89PNG"
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "a.json")
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # not str or bytes: fails inside the write
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_temporary_names_differ_across_machines_with_the_same_pid(tmp_path, monkeypatch):
    from dd_detectron.utils import unique_temp_name

    path = str(tmp_path / "progress" / "chunk-000000000.npz")
    monkeypatch.setattr("os.getpid", lambda: 4242)  # the same pid on two machines
    monkeypatch.setattr("socket.gethostname", lambda: "node-a")
    on_a = unique_temp_name(path)
    monkeypatch.setattr("socket.gethostname", lambda: "node-b")
    assert unique_temp_name(path) != on_a and on_a.startswith(path)


def test_atomic_write_syncs_before_the_rename_and_cleans_up_on_error(tmp_path, monkeypatch):
    from dd_detectron.utils import atomic_write

    path = str(tmp_path / "chunk.npz")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr("os.fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        "os.replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    with atomic_write(path, "wb") as f:
        f.write(b"new")
    assert events == ["fsync", "replace"] and open(path, "rb").read() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_write(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert open(path, "rb").read() == b"new" and os.listdir(tmp_path) == ["chunk.npz"]
