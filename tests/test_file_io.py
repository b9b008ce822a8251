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
