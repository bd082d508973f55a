"""vista.atomic: crash-safe file and folder writes (used by the cache, the trainer, the demo, video)."""
import os
import stat

import pytest

from vista.atomic import write_dir_atomically, write_file_atomically


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.bin"
    write_file_atomically(str(p), b"first")
    assert p.read_bytes() == b"first" and _mode(p) == 0o600  # mkstemp: owner-only
    os.chmod(p, 0o644)
    write_file_atomically(str(p), b"second", keep_mode=True)
    assert p.read_bytes() == b"second" and _mode(p) == 0o644
    write_file_atomically(str(p), b"third")
    assert p.read_bytes() == b"third" and _mode(p) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_failed_file_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_file_atomically(str(p), b"new")
    assert p.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_dir_write_mode_replace_and_failure(tmp_path):
    d = tmp_path / "model"

    def write(files):
        def run(tmp):
            for name, data in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(data)
        return run

    write_dir_atomically(str(d), write({"a": "1", "b": "2"}), mode=0o700)
    assert sorted(os.listdir(d)) == ["a", "b"] and _mode(d) == 0o700
    write_dir_atomically(str(d), write({"c": "3"}))  # replaces the folder as a whole
    assert sorted(os.listdir(d)) == ["c"]

    def fail(tmp):
        open(os.path.join(tmp, "half"), "w").close()
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        write_dir_atomically(str(d), fail)
    assert sorted(os.listdir(d)) == ["c"] and sorted(os.listdir(tmp_path)) == ["model"]
