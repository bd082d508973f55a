"""vista.cache.FeatureCache: LRU by bytes, counters, thread safety, the safetensors disk layer."""
import json
import os
import pickle
import signal
import subprocess
import sys
import threading

import pytest
import torch

from vista.cache import FeatureCache, VideoCacheHandle, array_identity, file_identity, weights_digest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _t(nbytes: int, fill: float = 0.0) -> dict:
    return {"x": torch.full((nbytes // 4,), fill, dtype=torch.float32)}


def test_lru_bounded_by_bytes_and_counters():
    c = FeatureCache(max_bytes=1000)
    c.put("features", "a", _t(400, 1.0))
    c.put("features", "b", _t(400, 2.0))
    assert c.get("features", "a").tensors["x"][0] == 1.0  # a is now the most recent
    c.put("features", "c", _t(400, 3.0))  # 1200 > 1000: evicts the least recent, b
    assert c.get("features", "b") is None
    assert c.get("features", "a") is not None and c.get("features", "c") is not None
    info = c.info()
    assert info["bytes"] == 800 <= info["max_bytes"] and info["entries"] == 2 and info["evictions"] == 1
    assert info["hits"] == 3 and info["misses"] == 1
    assert info["by_kind"]["features"] == {"hits": 3, "misses": 1, "disk_hits": 0, "entries": 2, "bytes": 800}
    c.put("scout", "big", _t(2000))  # larger than the bound: not kept, nothing evicted
    assert c.get("scout", "big") is None and c.info()["too_large"] == 1 and len(c) == 2
    # kinds are separate namespaces
    assert c.get("frames", "a") is None
    c.clear()
    assert len(c) == 0 and c.info()["hits"] == 0 and c.info()["bytes"] == 0


def test_zero_bytes_disables():
    c = FeatureCache(max_bytes=0)
    assert not c.enabled
    c.put("frames", "k", _t(8))
    assert c.get("frames", "k") is None and len(c) == 0
    h = VideoCacheHandle(c, ["v"], "m", "s")
    assert not h.enabled and h.features(0, "", "cpu") is None and h.scout_embeds(0, "", "cpu") is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        FeatureCache(-1)
    with pytest.raises(TypeError, match="cache_bytes must be an int"):
        FeatureCache("1GB")
    with pytest.raises(TypeError, match="cache_bytes"):
        FeatureCache(True)
    c = FeatureCache(100)
    with pytest.raises(ValueError, match="kind must be one of"):
        c.put("logits", "k", _t(4))
    with pytest.raises(TypeError, match="tensors must be a dict"):
        c.put("frames", "k", {"x": [1, 2]})
    with pytest.raises(TypeError, match="cache_dir"):
        FeatureCache(100, cache_dir=3)


def test_thread_safe_under_concurrent_puts_and_gets():
    c = FeatureCache(max_bytes=64 * 40)
    errors = []

    def work(tid):
        try:
            for i in range(200):
                k = f"{tid}-{i % 13}"
                c.put("features", k, _t(64, float(i % 13)))
                e = c.get("features", k)
                if e is not None and float(e.tensors["x"][0]) != float(i % 13):
                    errors.append((k, float(e.tensors["x"][0])))
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = c.info()
    assert info["bytes"] == 64 * info["entries"] <= 64 * 40
    assert info["hits"] + info["misses"] == 800


def test_identities(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"abc")
    a = file_identity(f)
    assert a["path"] == str(f) and a["size"] == 3
    f.write_bytes(b"abcd")
    assert file_identity(f) != a
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1.png").write_bytes(b"x")
    d1 = file_identity(tmp_path / "imgs")
    (tmp_path / "imgs" / "2.png").write_bytes(b"y")
    assert file_identity(tmp_path / "imgs") != d1
    x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    i1 = array_identity(x)
    x[0, 0, 0, 0] = 1
    assert array_identity(x) != i1 and array_identity(x.numpy()) == array_identity(x)
    w = [("a", torch.ones(10)), ("b", torch.zeros(3))]
    w2 = [("a", torch.ones(10)), ("b", torch.tensor([0.0, 0.0, 1.0]))]
    assert weights_digest(w) == weights_digest(list(w)) != weights_digest(w2)


# ------------------------------------------------------------------------------ disk layer


def test_disk_layer_round_trip_and_index(tmp_path):
    c = FeatureCache(max_bytes=10_000, cache_dir=tmp_path)
    frames = torch.randint(0, 255, (3, 4, 5, 3), dtype=torch.uint8)
    c.put("frames", "video-key", {"frames": frames, "t": torch.arange(3, dtype=torch.float64)}, {"fps": 8.0})
    assert c.info()["disk_writes"] == 1
    idx = json.loads((tmp_path / "index.json").read_text())
    (name, rec), = idx["entries"].items()
    assert name.endswith(".safetensors") and rec["kind"] == "frames" and rec["bytes"] == os.path.getsize(tmp_path / name)
    # a second process (here: a second cache object) finds it on disk
    c2 = FeatureCache(max_bytes=10_000, cache_dir=tmp_path)
    e = c2.get("frames", "video-key")
    assert e is not None and e.source == "disk" and e.meta == {"fps": 8.0}
    assert torch.equal(e.tensors["frames"], frames) and e.tensors["t"].dtype == torch.float64
    assert c2.info()["by_kind"]["frames"]["disk_hits"] == 1
    assert c2.get("frames", "video-key").source == "memory"  # kept in memory after the disk hit
    assert c2.get("frames", "other-key") is None
    # disk only (memory layer off) still serves
    c3 = FeatureCache(max_bytes=0, cache_dir=tmp_path)
    assert c3.enabled and c3.get("frames", "video-key") is not None and len(c3) == 0
    c3.clear(disk=True)
    assert not any(n.endswith(".safetensors") for n in os.listdir(tmp_path))
    assert FeatureCache(0, tmp_path).get("frames", "video-key") is None


def test_disk_layer_rejects_damaged_foreign_and_pickled_files(tmp_path):
    c = FeatureCache(max_bytes=0, cache_dir=tmp_path)
    c.put("features", "k1", _t(64, 1.0))
    path = c._path("features", "k1")
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # truncated file
        f.write(data[: len(data) // 2])
    assert c.get("features", "k1") is None and c.info()["disk_errors"] == 1
    # a valid safetensors file written under another key's name: the header does not match
    c.put("features", "k2", _t(64, 2.0))
    os.replace(c._path("features", "k2"), path)
    assert c.get("features", "k1") is None
    # a pickle planted under an entry's name is never unpickled (it would create a file)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    assert c.get("features", "k1") is None and not marker.exists()


_KILLED_WRITER = r"""
import os, sys, time
import torch
from vista.cache import FeatureCache
cache_dir, stage = sys.argv[1], sys.argv[2]
real_replace = os.replace
def slow_replace(src, dst):
    if (stage == "entry" and dst.endswith(".safetensors")) or (stage == "index" and dst.endswith("index.json")):
        print("paused", flush=True)
        time.sleep(120)
    return real_replace(src, dst)
os.replace = slow_replace
FeatureCache(0, cache_dir).put("features", "the-key", {"x": torch.arange(1000, dtype=torch.float32)})
"""


@pytest.mark.parametrize("stage", ["entry", "index"])
def test_disk_layer_survives_a_killed_writer(tmp_path, stage):
    """SIGKILL while the entry file (or the index) is being written: no bad entry, ever."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), stage], stdout=subprocess.PIPE,
                         env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "paused"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert any(n.startswith(".tmp-") for n in os.listdir(tmp_path))  # the interrupted write's leftover
    c = FeatureCache(0, tmp_path)
    e = c.get("features", "the-key")
    if stage == "entry":  # killed before the rename: no entry at all
        assert e is None
    else:  # the entry file was complete and renamed; only the index missed it
        assert e is not None and torch.equal(e.tensors["x"], torch.arange(1000, dtype=torch.float32))
    assert c.info()["disk_errors"] == 0
    c.put("features", "the-key", {"x": torch.ones(3)})  # writing again works
    assert torch.equal(FeatureCache(0, tmp_path).get("features", "the-key").tensors["x"], torch.ones(3))
    # leftovers of killed writers are removed once stale
    for n in os.listdir(tmp_path):
        if n.startswith(".tmp-"):
            os.utime(tmp_path / n, (1, 1))
    FeatureCache(0, tmp_path)
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path))


def test_a_failed_disk_write_is_counted_not_raised(tmp_path, monkeypatch):
    import errno

    import vista.cache as vc

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vc, "write_file_atomically", full)
    c = FeatureCache(max_bytes=1000, cache_dir=tmp_path)
    c.put("features", "k", _t(64, 5.0))
    assert c.info()["disk_errors"] == 1 and c.info()["disk_writes"] == 0
    assert float(c.get("features", "k").tensors["x"][0]) == 5.0  # the memory layer still holds it
    assert FeatureCache(0, tmp_path).get("features", "k") is None
