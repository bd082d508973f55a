"""vista.video: uniform (in time) sampling, PyAV decoding, rotation, short videos, image folders, errors."""
import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from vista.video import (  # noqa: E402
    Video,
    VideoError,
    as_video,
    load_video,
    sample_by_time,
    synthetic_video,
    uniform_indices,
    write_video,
)


@pytest.fixture(scope="module")
def clip():
    return synthetic_video(24, height=48, width=64, seed=3)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, clip):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", clip.frames, fps=8)


def _close(a, b, tol=14.0):
    """Lossy codec: frames match on average to within a few grey levels."""
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) < tol


# ------------------------------------------------------------------------------ sampling


def test_uniform_indices():
    assert uniform_indices(24, 8).tolist() == [0, 3, 7, 10, 13, 16, 20, 23]
    assert uniform_indices(5, 64).tolist() == [0, 1, 2, 3, 4]
    assert uniform_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert uniform_indices(9, 1).tolist() == [4]
    for total in (2, 7, 63, 64, 65, 1000):
        for num in (2, 3, 16, 64):
            idx = uniform_indices(total, num)
            assert len(idx) == min(total, num)
            assert idx[0] == 0 and idx[-1] == total - 1
            assert np.all(np.diff(idx) > 0)


def test_sample_by_time_variable_frame_rate():
    # 20 frames 10 ms apart, then 10 frames 100 ms apart: time-uniform picks differ from index-uniform
    times = np.concatenate([np.arange(20) * 0.01, 0.3 + np.arange(10) * 0.1])
    sel = sample_by_time(times, 7)
    assert sel.tolist() == [0, 19, 21, 23, 25, 27, 29]
    gaps = np.diff(times[sel])
    assert gaps.max() - gaps.min() < 0.12  # evenly spread in time
    assert uniform_indices(30, 7).tolist() != sel.tolist()
    # constant frame rate: same as index-uniform
    assert sample_by_time(np.arange(24) / 8.0, 8).tolist() == uniform_indices(24, 8).tolist()


def test_sample_by_time_distinct_increasing_with_gaps():
    rng = np.random.default_rng(0)
    for _ in range(50):
        K = int(rng.integers(1, 80))
        times = np.cumsum(rng.exponential(1.0, K) * rng.choice([0.01, 1.0, 50.0], K))
        num = int(rng.integers(1, 100))
        sel = sample_by_time(times, num)
        assert len(sel) == min(K, num)
        assert np.all(np.diff(sel) > 0)
        assert sel.min() >= 0 and sel.max() < K


# ------------------------------------------------------------------------------ decoding


def test_load_mp4_uniform(mp4, clip):
    v = load_video(mp4, 8)
    assert isinstance(v, Video)
    assert v.frames.shape == (8, 48, 64, 3) and v.frames.dtype == np.uint8
    assert v.indices.tolist() == [0, 3, 7, 10, 13, 16, 20, 23]
    assert v.total_frames == 24 and v.requested == 8 and v.notes == []
    assert v.fps == pytest.approx(8.0)
    np.testing.assert_allclose(v.timestamps, v.indices / 8.0, atol=1e-6)
    for k, i in enumerate(v.indices):
        assert _close(v.frames[k], clip.frames[i]), k
    assert v.decode_seconds > 0


def test_load_h264_and_max_side(tmp_path, clip):
    p = write_video(tmp_path / "c.mp4", clip.frames[:10], codec="libx264")
    v = load_video(p, 4, max_side=32)
    assert v.frames.shape == (4, 24, 32, 3)
    assert v.indices.tolist() == [0, 3, 6, 9]


def test_variable_frame_rate_file(tmp_path, clip):
    pts = [i * 10 for i in range(16)] + [300 + i * 100 for i in range(8)]  # ms
    p = write_video(tmp_path / "vfr.mp4", clip.frames, pts=pts)
    v = load_video(p, 7)
    gaps = np.diff(v.timestamps)
    assert v.num_frames == 7
    assert gaps.max() - gaps.min() < 0.12, v.timestamps
    assert v.timestamps[-1] == pytest.approx(1.0, abs=1e-3)
    for k, i in enumerate(v.indices):
        assert _close(v.frames[k], clip.frames[i])


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_applied(tmp_path, rotation):
    frames = np.zeros((3, 32, 48, 3), dtype=np.uint8)
    frames[:, :16, :24] = 255  # white top-left quadrant
    p = write_video(tmp_path / "r.mp4", frames, rotation=rotation)
    v = load_video(p, 3)
    assert v.rotation == rotation
    expect = np.rot90(frames[0], rotation // 90)  # counter-clockwise
    assert v.frames[0].shape == expect.shape
    assert _close(v.frames[0], expect, tol=20)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_written_into_track_header(tmp_path, rotation):
    """The writer path PyAV < 16 takes (no set_display_rotation): the display matrix is patched
    into the MP4 track header after muxing. Exercised on every PyAV version."""
    from vista.video import _set_mp4_rotation

    frames = np.zeros((3, 32, 48, 3), dtype=np.uint8)
    frames[:, :16, :24] = 255
    p = write_video(tmp_path / "r.mp4", frames)
    assert load_video(p, 3).rotation == 0
    _set_mp4_rotation(p, rotation)
    v = load_video(p, 3)
    assert v.rotation == rotation
    expect = np.rot90(frames[0], rotation // 90)
    assert v.frames[0].shape == expect.shape
    assert _close(v.frames[0], expect, tol=20)


def test_rotation_needs_mp4_on_old_pyav(tmp_path, monkeypatch):
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    if hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip(f"PyAV {av.__version__} writes the rotation itself in any container")
    with pytest.raises(VideoError, match="rotation on PyAV"):
        write_video(tmp_path / "r.mkv", frames, rotation=90)


def test_short_video_takes_all_and_says_so(tmp_path, clip):
    p = write_video(tmp_path / "short.mp4", clip.frames[:5])
    v = load_video(p, 64)
    assert v.num_frames == 5 and v.indices.tolist() == [0, 1, 2, 3, 4]
    assert len(v.notes) == 1 and "only 5 frames" in v.notes[0] and "64" in v.notes[0]
    one = load_video(write_video(tmp_path / "one.mp4", clip.frames[:1]), 8)
    assert one.num_frames == 1 and "only 1 frame;" in one.notes[0]


def test_image_folder_is_a_video(tmp_path, clip):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(12):  # natural order: frame2 before frame10
        Image.fromarray(clip.frames[i]).save(d / f"frame{i}.png")
    (d / "notes.txt").write_text("not an image")
    v = load_video(d, 4)
    assert v.total_frames == 12 and v.indices.tolist() == [0, 4, 7, 11]
    for k, i in enumerate(v.indices):
        np.testing.assert_array_equal(v.frames[k], clip.frames[i])  # PNG is lossless
    # a differently sized image is resized to the first one's size, with a note
    Image.fromarray(clip.frames[0]).resize((32, 24)).save(d / "frame99.png")
    v = load_video(d, 64)
    assert v.frames.shape == (13, 48, 64, 3)
    assert any("resized" in n for n in v.notes) and any("only 13 images" in n for n in v.notes)
    single = load_video(d / "frame3.png", 8)
    assert single.num_frames == 1


def test_as_video_array_and_errors(clip):
    v = as_video(clip.frames, 6)
    assert v.num_frames == 6 and v.indices.tolist() == uniform_indices(24, 6).tolist()
    assert as_video(v) is v
    with pytest.raises(VideoError, match="uint8"):
        as_video(clip.frames.astype(np.float32))
    with pytest.raises(VideoError, match="shape"):
        as_video(np.zeros((4, 8, 8), np.uint8))


def test_synthetic_video_has_scene_cuts():
    v = synthetic_video(12, scenes=3)
    assert v.frames.shape == (12, 96, 128, 3)
    np.testing.assert_array_equal(v.frames, synthetic_video(12, scenes=3).frames)  # deterministic
    means = v.frames.reshape(12, -1, 3).mean(1)
    jump = np.abs(np.diff(means, axis=0)).sum(1)
    cuts = set(np.argsort(jump)[-2:].tolist())
    assert cuts == {3, 7}  # between frames 3|4 and 7|8


# ------------------------------------------------------------------------------ errors


def _err(path, frames=8):
    with pytest.raises(VideoError) as ei:
        load_video(path, frames)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_errors_name_file_and_problem(tmp_path, clip):
    assert "no such file" in _err(tmp_path / "missing.mp4")
    txt = tmp_path / "notes.mp4"
    txt.write_text("this is a text file, not a video\n" * 20)
    m = _err(txt)
    assert str(txt) in m and "not a readable video" in m
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "empty (0 bytes)" in _err(empty)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    assert "no images" in _err(folder)
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"\x89PNG not really")
    assert "not a readable image" in _err(bad_img)


def test_unsupported_codec(tmp_path, clip):
    p = write_video(tmp_path / "c.mkv", clip.frames[:4])
    data = bytearray(open(p, "rb").read())
    i = data.find(b"V_MPEG4")
    assert i >= 0
    data[i : i + 7] = b"V_ZZZZZ"  # an unknown Matroska codec id
    bad = tmp_path / "unknown.mkv"
    bad.write_bytes(bytes(data))
    assert "unsupported video codec" in _err(bad)


def test_truncated_file(tmp_path, clip):
    p = write_video(tmp_path / "c.mp4", clip.frames)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(open(p, "rb").read()[:200])
    assert str(cut) in _err(cut)


@pytest.mark.parametrize("frames", [0, -3, 2.5, True, "8"])
def test_bad_frame_count(mp4, frames):
    assert "frames" in _err(mp4, frames)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(VideoError):
        write_video(tmp_path / "x.mp4", np.zeros((2, 9, 8, 3), np.uint8))  # odd height
    with pytest.raises(VideoError):
        write_video(tmp_path / "x.mp4", np.zeros((0, 8, 8, 3), np.uint8))
    assert not os.path.exists(tmp_path / "x.mp4")


def test_b_frames_decode_in_presentation_order(tmp_path, clip):
    p = tmp_path / "bf.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"bf": "3", "preset": "medium"}
        for f in clip.frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    v = load_video(p, 8)
    assert v.indices.tolist() == [0, 3, 7, 10, 13, 16, 20, 23]
    for k, i in enumerate(v.indices):
        assert _close(v.frames[k], clip.frames[i]), k


def test_audio_only_file(tmp_path):
    p = tmp_path / "sound.wav"
    with av.open(str(p), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for pkt in s.encode(fr):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    assert "contains no video stream" in _err(p)


def test_raw_stream_without_timestamps(tmp_path, clip):
    """An elementary H.264 stream has no packet timestamps: frames are chosen by decode order."""
    p = tmp_path / "raw.h264"
    with av.open(str(p), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in clip.frames[:20]:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    v = load_video(p, 6)
    assert v.total_frames == 20 and v.indices.tolist() == uniform_indices(20, 6).tolist()
    assert np.all(np.diff(v.timestamps) > 0)
    for k, i in enumerate(v.indices):
        assert _close(v.frames[k], clip.frames[i]), k


# ------------------------------------------------------------------------------ time ranges


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory):
    """40 frames at 10 fps (4 s); frame i is a solid grey of level 6 * i, so a decoded frame names its index."""
    frames = np.repeat((np.arange(40, dtype=np.uint8) * 6)[:, None, None, None], 32 * 32 * 3, axis=1)
    frames = frames.reshape(40, 32, 32, 3)
    return write_video(tmp_path_factory.mktemp("c") / "counter.mp4", frames, fps=10)


def _frame_ids(video):
    return [int(round(float(f.mean()) / 6)) for f in video.frames]


def test_time_range_samples_inside_the_range(counter_mp4):
    whole = load_video(counter_mp4, 8)
    assert whole.clip is None and _frame_ids(whole)[0] == 0 and _frame_ids(whole)[-1] == 39
    v = load_video(counter_mp4, 5, start=1.0, end=2.0)
    ids = _frame_ids(v)
    assert ids == v.indices.tolist() == [10, 12, 15, 17, 20]  # uniform in [1.0, 2.0] s, ends included (ties: earlier)
    assert np.allclose(v.timestamps, [1.0, 1.2, 1.5, 1.7, 2.0])  # seconds from the video's start
    assert v.clip == (1.0, 2.0) and v.total_frames == 11 and v.notes == []
    # start only / end only
    assert _frame_ids(load_video(counter_mp4, 3, start=3.0)) == [30, 35, 39]
    assert _frame_ids(load_video(counter_mp4, 3, end=0.4)) == [0, 2, 4]
    # fewer frames in the range than asked: all of them, with a note
    few = load_video(counter_mp4, 64, start=0.5, end=0.8)
    assert _frame_ids(few) == [5, 6, 7, 8] and "time range has only 4 frames" in few.notes[0]


def test_time_range_past_the_end_is_clipped(counter_mp4):
    v = load_video(counter_mp4, 4, start=3.5, end=10.0)
    assert _frame_ids(v) == [35, 36, 38, 39]
    assert v.clip == (3.5, 4.0)
    assert any("extends past the end of the video (4 s)" in n and "clipped to [3.5, 4]" in n for n in v.notes)


@pytest.mark.parametrize("kw, match", [
    ({"start": -1.0, "end": 2.0}, "start must be >= 0"),
    ({"start": 2.0, "end": 2.0}, r"time range \[2, 2\] s is empty"),
    ({"start": 3.0, "end": 1.0}, r"time range \[3, 1\] s is empty"),
    ({"start": float("nan")}, "finite"),
    ({"end": "2"}, "number of seconds"),
    ({"start": True}, "number of seconds"),
])
def test_bad_time_range(counter_mp4, kw, match):
    with pytest.raises(VideoError, match=match):
        load_video(counter_mp4, 4, **kw)


def test_time_range_without_frames(counter_mp4):
    with pytest.raises(VideoError, match=r"counter\.mp4: time range \[5, 6\] s starts after the end"):
        load_video(counter_mp4, 4, start=5.0, end=6.0)
    with pytest.raises(VideoError, match=r"counter\.mp4: no frames in time range \[1.01, 1.05\] s"):
        load_video(counter_mp4, 4, start=1.01, end=1.05)


def test_time_range_on_images_and_arrays_is_refused(tmp_path, clip):
    from PIL import Image

    for i in range(3):
        Image.fromarray(clip.frames[i]).save(tmp_path / f"f{i}.png")
    with pytest.raises(VideoError, match=r"time range \(\[1, 2\] s\) needs a video file; an image folder"):
        load_video(tmp_path, 2, start=1, end=2)
    with pytest.raises(VideoError, match="needs a video file, not an image"):
        load_video(tmp_path / "f0.png", 2, start=1)
    with pytest.raises(VideoError, match="needs a video path"):
        as_video(clip.frames, 4, start=0.0, end=1.0)
    assert as_video(clip.frames, 4).num_frames == 4


def test_time_range_seeks_past_b_frames_and_raw_streams(tmp_path):
    """A range late in an H.264 file with B-frames and short GOPs (the decoder seeks to a keyframe),
    and a raw stream without timestamps (times from the stream's frame rate, with a note)."""
    frames = np.repeat((np.arange(60, dtype=np.uint8) * 4)[:, None, None, None], 32 * 32 * 3, axis=1)
    frames = frames.reshape(60, 32, 32, 3)
    p = tmp_path / "bf.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.options = {"preset": "ultrafast", "bf": "3", "g": "12"}
        s.codec_context.max_b_frames, s.codec_context.gop_size = 3, 12
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    v = load_video(p, 5, start=3.0, end=5.0)
    assert v.indices.tolist() == [30, 35, 40, 45, 50]
    assert all(abs(float(f.mean()) / 4 - i) <= 1 for f, i in zip(v.frames, v.indices))
    raw = tmp_path / "raw.h264"
    with av.open(str(raw), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for f in frames[:20]:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    r = load_video(raw, 3, start=0.2, end=0.6)
    rate = r.fps  # the demuxer's rate for a raw stream (FFmpeg assumes 25 fps)
    expect = [int(round(t * rate)) for t in (0.2, 0.4, 0.6)]
    assert r.indices.tolist() == expect and r.clip == (0.2, 0.6)
    assert any("no usable timestamps" in n for n in r.notes)
