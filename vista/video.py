"""Video input for Vista: decode a file (PyAV) or a folder of images into uniformly sampled frames.

``load_video(path, num_frames=64)`` returns a :class:`Video` whose ``frames`` is a
``(T, H, W, 3)`` uint8 RGB array. Sampling is uniform in *time* (presentation timestamps), so
variable-frame-rate videos are sampled evenly over their duration; display rotation metadata is
applied; a video with fewer frames than asked gives all of its frames and says so in
``Video.notes``. Anything that cannot be read raises :class:`VideoError` (a ``ValueError``) with a
one-line message that names the file and the problem.

``load_video(path, num_frames, start=..., end=...)`` samples only the frames whose timestamps
(seconds from the video's first frame) fall in ``[start, end]`` -- the clipped tasks of MVBench
give such a range. A range that runs past the end of the video is clipped to it (and
``Video.notes`` says so); a range that holds no frame raises VideoError. Image folders and single
images have no timestamps, so a time range on them raises VideoError.

Also here: ``synthetic_video`` (moving shapes with scene cuts, for the offline demo and tests) and
``write_video`` (encode frames to a file with PyAV).
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_NUM_FRAMES = 64  # the paper's sampling protocol (PAPER §4.1)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class VideoError(ValueError):
    """A video that cannot be used: missing, empty, corrupt, unsupported, or a bad argument."""


@dataclass
class Video:
    """Frames sampled from one video.

    frames: (T, H, W, 3) uint8 RGB, in time order, rotation metadata already applied.
    timestamps: (T,) seconds of each sampled frame (frame index / 1 fps for image folders).
    indices: (T,) index of each sampled frame among the source's frames (presentation order).
    total_frames: number of frames the source holds (decoded, for video files).
    requested: number of frames asked for.
    fps: average frame rate of the source (None for image folders or when unknown).
    rotation: counter-clockwise display rotation applied, in degrees (0 when none).
    source: the path it came from ("<synthetic>" for generated videos).
    notes: human-readable remarks (e.g. "only 5 frames; using all of them").
    decode_seconds: time spent decoding and sampling.
    clip: the (start, end) time range in seconds that was sampled, after clipping to the video's
        duration; None when the whole video was sampled. With a clip, ``timestamps`` are seconds
        from the video's first frame (not from the clip's first sampled frame) and
        ``total_frames`` counts the frames inside the range.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    total_frames: int
    requested: int
    fps: Optional[float] = None
    rotation: int = 0
    source: str = ""
    notes: List[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    clip: Optional[Tuple[float, float]] = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Seconds spanned by the source's frames (first to last sampled timestamp)."""
        if len(self.timestamps) < 2:
            return 0.0
        return float(self.timestamps[-1] - self.timestamps[0])

    def summary(self) -> str:
        return (f"{self.num_frames} frames of {self.total_frames} ({self.width}x{self.height}"
                + (f", {self.fps:.3g} fps" if self.fps else "") + ")")


# --------------------------------------------------------------------------- sampling


def check_num_frames(num_frames) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise VideoError(f"frames must be a whole number >= 1, got {num_frames!r}")
    if num_frames < 1:
        raise VideoError(f"frames must be >= 1, got {num_frames}")
    return int(num_frames)


def uniform_indices(total: int, num: int) -> np.ndarray:
    """``num`` distinct indices in [0, total) spread evenly, first and last included.

    With ``num >= total`` every index is returned.
    """
    if total < 1:
        raise VideoError("cannot sample from an empty video")
    num = check_num_frames(num)
    if num >= total:
        return np.arange(total, dtype=np.int64)
    if num == 1:
        return np.array([(total - 1) // 2], dtype=np.int64)
    return np.round(np.linspace(0, total - 1, num)).astype(np.int64)  # distinct since num < total


def sample_by_time(times: Sequence[float], num: int) -> np.ndarray:
    """Indices of ``num`` distinct frames closest to evenly spaced instants over [times[0], times[-1]].

    ``times`` must be non-decreasing (presentation order). Works for variable frame rates: the
    instants are uniform in time, not in frame count. Each chosen index is strictly greater than
    the previous one, so no frame is used twice; with ``num >= len(times)`` all frames are used.
    """
    t = np.asarray(times, dtype=np.float64)
    K = t.shape[0]
    num = check_num_frames(num)
    if K == 0:
        raise VideoError("cannot sample from an empty video")
    if num >= K:
        return np.arange(K, dtype=np.int64)
    if not np.all(np.isfinite(t)) or t[-1] <= t[0]:
        return uniform_indices(K, num)
    if num == 1:
        targets = np.array([(t[0] + t[-1]) / 2])
    else:
        targets = np.linspace(t[0], t[-1], num)
    pos = np.searchsorted(t, targets)  # first index with t >= target
    out = np.empty(num, dtype=np.int64)
    prev = -1
    for j, (tau, p) in enumerate(zip(targets, pos)):
        cand = min(int(p), K - 1)
        if cand > 0 and abs(t[cand - 1] - tau) <= abs(t[cand] - tau):
            cand -= 1  # nearest; ties go to the earlier frame
        # distinct and increasing, leaving room for the remaining picks
        cand = max(cand, prev + 1)
        cand = min(cand, K - (num - j))
        out[j] = cand
        prev = cand
    return out


# --------------------------------------------------------------------------- decoding


def _one_line(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)  # FFmpegError: the message without errno and path
    if isinstance(strerror, str) and strerror.strip():
        return strerror.strip().splitlines()[0]
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation (degrees, multiple of 90) to an HxWxC image."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _frame_size(w: int, h: int, max_side: Optional[int]) -> Tuple[int, int]:
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(2, int(round(w * s)) // 2 * 2), max(2, int(round(h * s)) // 2 * 2)


def _open_container(path: str):
    import av

    try:
        return av.open(path, mode="r")
    except av.error.FFmpegError as e:  # InvalidDataError, DemuxerNotFoundError, ...
        raise VideoError(f"{path}: not a readable video ({_one_line(e)})") from None
    except (OSError, UnicodeError) as e:
        raise VideoError(f"{path}: cannot open ({_one_line(e)})") from None


def _video_stream(container, path: str):
    streams = container.streams.video
    if len(streams) == 0:
        raise VideoError(f"{path}: contains no video stream")
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoError(f"{path}: unsupported video codec")
    return stream


def _packet_times(path: str) -> Tuple[List[int], Fraction, Optional[float], str]:
    """Presentation timestamps (pts) of the video stream's packets (demux only, no decoding), sorted."""
    import av

    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        codec_name = getattr(stream.codec_context, "name", "?")
        pts = []
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0 or pkt.pts is None:
                    continue
                pts.append(int(pkt.pts))
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: corrupt video data ({_one_line(e)})") from None
        fps = float(stream.average_rate) if stream.average_rate else None
        return sorted(pts), Fraction(stream.time_base or Fraction(1, 1)), fps, codec_name
    finally:
        container.close()


def _decode(path: str, wanted: dict, out_size, progress: bool, total: int, seek_pts: Optional[int] = None):
    """Decode the video stream once.

    ``wanted`` maps a frame key -- its pts, or ``("#", i)`` for the i-th decoded frame -- to an
    output slot. Returns ({slot: (rgb, rotation)}, [pts of every decoded frame, None if unknown]).
    Decoding stops once every wanted frame is in hand. ``seek_pts`` (only with pts keys) first
    seeks to the keyframe at or before that pts; the returned list of pts is then empty (it does
    not describe the whole stream), and wanted frames before the landing point are simply missing.
    """
    import av

    container = _open_container(path)
    got: Dict[int, Tuple[np.ndarray, int]] = {}
    seen: List[Optional[int]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total or None, desc="decoding", unit="frame", leave=False)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        if seek_pts is not None:
            try:
                container.seek(int(seek_pts), stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                container.seek(0, stream=stream)  # no index: decode from the start
        try:
            for i, frame in enumerate(container.decode(stream)):
                seen.append(None if frame.pts is None else int(frame.pts))
                slot = wanted.get(("#", i))
                if slot is None and frame.pts is not None:
                    slot = wanted.get(int(frame.pts))
                if slot is not None and slot not in got:
                    w, h = _frame_size(frame.width, frame.height, out_size)
                    rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
                    got[slot] = (rgb, int(frame.rotation or 0))
                if bar is not None:
                    bar.update(1)
                if wanted and len(got) == len(wanted):
                    break  # everything asked for is decoded: skip the rest of the file
        except av.error.DecoderNotFoundError as e:
            raise VideoError(f"{path}: unsupported video codec ({_one_line(e)})") from None
        except av.error.FFmpegError as e:
            if not seen:
                raise VideoError(f"{path}: cannot decode video ({_one_line(e)})") from None
            # a truncated tail: keep what decoded
    finally:
        if bar is not None:
            bar.close()
        container.close()
    return got, ([] if seek_pts is not None else seen)


def _clip_range(times: np.ndarray, fps: Optional[float], clip, path: str, notes: List[str]):
    """Indices (into ``times``, non-decreasing) of the frames inside the time range ``clip``.

    Times are seconds from the first frame. A range past the end of the video is clipped (with a
    note); a range holding no frame raises VideoError. Returns (indices, (start, end) used).
    """
    start, end = clip
    t = times - times[0]
    frame_dur = (1.0 / fps) if fps else (float(np.median(np.diff(t))) if len(t) > 1 else 0.0)
    duration = float(t[-1]) + max(frame_dur, 0.0)
    shown = f"[{_fmt_s(start)}, {_fmt_s(end if end is not None else duration)}] s"
    if start >= duration:
        raise VideoError(f"{path}: time range {shown} starts after the end of the video "
                         f"({_fmt_s(duration)} s); no frames to sample")
    if end is None:
        end = duration
    elif end > duration:
        notes.append(f"time range {shown} extends past the end of the video ({_fmt_s(duration)} s); "
                     f"clipped to [{_fmt_s(start)}, {_fmt_s(duration)}] s")
        end = duration
    eps = 1e-6
    inside = np.nonzero((t >= start - eps) & (t <= end + eps))[0]
    if inside.size == 0:
        raise VideoError(f"{path}: no frames in time range {shown} "
                         f"(video of {_fmt_s(duration)} s, {len(t)} frames)")
    return inside.astype(np.int64), (float(start), float(end))


def _fmt_s(x: float) -> str:
    return f"{float(x):.6g}"


def _load_video_file(path: str, num_frames: int, max_side: Optional[int], progress: bool,
                     clip: Optional[Tuple[float, Optional[float]]] = None) -> Video:
    """Decode and sample ``num_frames`` frames of a video file (of the time range ``clip``):
    chosen from the demuxed timestamps when they are usable, else among the frames that decode,
    in decoded order."""
    pts, tb, fps, codec = _packet_times(path)
    seen: List[Optional[int]] = []
    if pts and len(set(pts)) == len(pts):
        video, seen = _load_by_timestamps(path, pts, tb, fps, num_frames, max_side, progress, clip)
        if video is not None:
            return video
    # Fallback (missing/duplicate timestamps, or frames the decoder dropped): choose among the
    # frames that actually decode, by their decoded order.
    if not seen:
        _, seen = _decode(path, {}, max_side, progress and not pts, len(pts))
    if not seen:
        raise VideoError(f"{path}: contains no decodable video frames (codec {codec})")
    notes: List[str] = []
    times, sel, ts, total, used = _pick_decoded(path, seen, tb, fps, num_frames, clip, notes)
    wanted = {("#", int(i)): j for j, i in enumerate(sel)}
    got, _ = _decode(path, wanted, max_side, False, len(seen))
    if len(got) != len(sel):
        raise VideoError(f"{path}: frames changed between two decodes; the file may be corrupt")
    frames = [got[j] for j in range(len(sel))]
    origin = (times[0] if times is not None else 0.0) if clip is not None else None
    return _finish(path, frames, ts, sel, total, num_frames, fps, notes, origin, used)


def _load_by_timestamps(path, pts, tb, fps, num_frames, max_side, progress, clip):
    """First try: choose the frames from the demuxed (unique) timestamps and decode once,
    keeping those. Returns (Video, or None when the decoder dropped a chosen frame; the
    timestamps of the frames that decoded, in order)."""
    notes: List[str] = []
    used = None
    times = np.asarray([float(p * tb) for p in pts])
    if clip is None:
        sel = sample_by_time(times, num_frames)
        total = len(pts)
    else:
        inside, used = _clip_range(times, fps, clip, path, notes)
        sel = inside[sample_by_time(times[inside], num_frames)]
        total = len(inside)
    wanted = {pts[int(i)]: j for j, i in enumerate(sel)}
    # with a range starting later in the video, seek to the keyframe before it
    seek = pts[int(sel[0])] if clip is not None and sel[0] > 0 else None
    got, seen = _decode(path, wanted, max_side, progress, len(pts), seek_pts=seek)
    if len(got) != len(sel):
        return None, seen
    frames = [got[j] for j in range(len(sel))]
    origin = times[0] if clip is not None else None
    return _finish(path, frames, times[sel], sel, total, num_frames, fps, notes, origin, used), seen


def _pick_decoded(path, seen, tb, fps, num_frames, clip, notes):
    """Fallback choice among the decoded frames (``seen``: their timestamps in decoded order,
    None where missing): times from the timestamps when they increase, else from the frame
    rate, else none (uniform by index). Returns (times or None, chosen decoded indices, their
    times, frames to choose from, (start, end) of the clip used or None)."""
    used = None
    monotone = all(p is not None for p in seen) and bool(np.all(np.diff(np.asarray(seen, dtype=np.int64)) > 0))
    if monotone:
        times = np.asarray([float(p * tb) for p in seen])
    elif fps:
        times = np.arange(len(seen), dtype=np.float64) / fps
    else:
        times = None
    if clip is not None:
        if times is None:
            raise VideoError(f"{path}: frames have no usable timestamps or frame rate; "
                             f"cannot sample the time range [{_fmt_s(clip[0])}, "
                             f"{_fmt_s(clip[1]) if clip[1] is not None else 'end'}] s")
        if not monotone:
            notes.append(f"frames have no usable timestamps; time range measured at the stream's "
                         f"frame rate ({fps:.4g} fps)")
        inside, used = _clip_range(times, fps, clip, path, notes)
        sel = inside[sample_by_time(times[inside], num_frames)]
        ts = times[sel]
        total = len(inside)
    elif monotone:
        sel = sample_by_time(times, num_frames)
        ts = times[sel]
        total = len(seen)
    else:
        sel = uniform_indices(len(seen), num_frames)
        ts = sel / fps if fps else sel.astype(np.float64)
        total = len(seen)
    return times, sel, ts, total, used


def _finish(path, frames, ts, sel, total, requested, fps, notes, origin=None, clip=None) -> Video:
    k = int(round((frames[0][1] if frames else 0) / 90.0)) % 4
    rotation = (0, 90, 180, -90)[k]  # normalised: -180 and 180 are the same turn
    imgs = [_rotate(rgb, rot) for rgb, rot in frames]
    shape = imgs[0].shape
    if any(im.shape != shape for im in imgs):  # resolution changes mid-stream
        imgs = [_resize(im, shape[1], shape[0]) for im in imgs]
        notes.append("frame size changes within the video; frames resized to the first one's")
    if total < requested:
        what = "time range" if clip is not None else "video"
        notes.append(f"{what} has only {total} frame{'s' if total != 1 else ''}; using all of them "
                     f"(asked for {requested})")
    if origin is None:
        origin = float(ts[0]) if len(ts) else 0.0
    return Video(
        frames=np.stack(imgs),
        timestamps=np.asarray(ts, dtype=np.float64) - float(origin),
        indices=np.asarray(sel, dtype=np.int64),
        total_frames=int(total),
        requested=int(requested),
        fps=fps,
        rotation=int(rotation),
        source=path,
        notes=notes,
        clip=clip,
    )


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


# --------------------------------------------------------------------------- images


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_images(folder: str) -> List[str]:
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def _read_image(path: str, max_side: Optional[int]) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # EXIF orientation
            im = im.convert("RGB")
            w, h = _frame_size(im.width, im.height, max_side)
            if (w, h) != im.size:
                im = im.resize((w, h), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoError(f"{path}: not a readable image ({_one_line(e)})") from None


def _load_images(paths: List[str], source: str, num_frames: int, max_side: Optional[int], progress: bool) -> Video:
    sel = uniform_indices(len(paths), num_frames)
    it = sel
    if progress:
        from tqdm import tqdm

        it = tqdm(sel, desc="reading images", unit="image", leave=False)
    imgs = [_read_image(paths[int(i)], max_side) for i in it]
    notes: List[str] = []
    h, w = imgs[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in imgs):
        imgs = [im if im.shape[:2] == (h, w) else _resize(im, w, h) for im in imgs]
        notes.append(f"images differ in size; resized to {w}x{h}")
    if len(paths) < num_frames:
        notes.append(f"only {len(paths)} image{'s' if len(paths) != 1 else ''}; using all of them "
                     f"(asked for {num_frames})")
    return Video(
        frames=np.stack(imgs),
        timestamps=sel.astype(np.float64),
        indices=sel,
        total_frames=len(paths),
        requested=num_frames,
        fps=None,
        rotation=0,
        source=source,
        notes=notes,
    )


# --------------------------------------------------------------------------- public


def load_video(path, num_frames: int = DEFAULT_NUM_FRAMES, *, max_side: Optional[int] = None,
               progress: bool = False, start: Optional[float] = None, end: Optional[float] = None) -> Video:
    """Decode ``path`` and sample ``num_frames`` frames uniformly in time.

    With ``start`` and/or ``end`` only the frames inside that time range are sampled.

    Args:
        path: a video file (anything FFmpeg reads), a single image, or a folder of images
            (sorted in natural order: frame2.png before frame10.png).
        num_frames: frames to sample (default 64). Fewer frames in the source: all are used and
            ``Video.notes`` says so.
        max_side: if set, frames are scaled down so that their longer side is at most this.
        progress: show a tqdm progress bar while decoding.
        start, end: optional time range in seconds from the video's first frame (``start``
            defaults to 0, ``end`` to the end of the video); the ``num_frames`` frames are sampled
            uniformly in time among the frames whose timestamps lie in ``[start, end]``, and
            ``Video.clip`` records the range used. Needs ``start >= 0`` and ``end > start``. An
            ``end`` past the video's duration is clipped to it, with a note in ``Video.notes``.
            Video files only: image folders and single images have no timestamps, so a range on
            them raises VideoError (rather than guessing a frame rate).
    Raises:
        VideoError: missing path, empty file, no video stream, corrupt data, unsupported codec,
            empty folder, bad ``num_frames``, a bad time range (negative ``start``, ``end <=
            start``, not a number), a range with no frames in it (e.g. starting after the end of
            the video), or a range on an image folder / image.
    """
    t0 = time.perf_counter()
    clip = check_time_range(start, end)
    video = _load(path, check_num_frames(num_frames), max_side, progress, clip)
    video.decode_seconds = time.perf_counter() - t0
    return video


def check_time_range(start, end) -> Optional[Tuple[float, Optional[float]]]:
    """``(start, end)`` in seconds, validated; None when both are None (the whole video).

    ``end`` stays None for "to the end of the video".
    """
    if start is None and end is None:
        return None
    vals = []
    for name, v in (("start", start), ("end", end)):
        if v is None:
            vals.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise VideoError(f"{name} must be a number of seconds, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise VideoError(f"{name} must be a finite number of seconds, got {v!r}")
        vals.append(v)
    s, e = vals
    s = 0.0 if s is None else s
    if s < 0:
        raise VideoError(f"start must be >= 0 seconds, got {_fmt_s(s)}")
    if e is not None and e <= s:
        raise VideoError(f"time range [{_fmt_s(s)}, {_fmt_s(e)}] s is empty: end must be greater than start")
    return s, e


def _load(path, num_frames: int, max_side: Optional[int], progress: bool, clip=None) -> Video:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 2):
        raise VideoError(f"max_side must be None or an int >= 2, got {max_side!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise VideoError(f"video path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        paths = list_images(path)
        if not paths:
            raise VideoError(f"{path}: folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        if clip is not None:
            raise VideoError(f"{path}: a time range ({_range_str(clip)}) needs a video file; an image "
                             f"folder has no timestamps")
        return _load_images(paths, path, num_frames, max_side, progress)
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    if path.lower().endswith(IMAGE_EXTENSIONS):
        if clip is not None:
            raise VideoError(f"{path}: a time range ({_range_str(clip)}) needs a video file, not an image")
        return _load_images([path], path, num_frames, max_side, progress)
    return _load_video_file(path, num_frames, max_side, progress, clip)


def _range_str(clip) -> str:
    s, e = clip
    return f"[{_fmt_s(s)}, {'end' if e is None else _fmt_s(e)}] s"


def as_video(video, num_frames: int = DEFAULT_NUM_FRAMES, **kw) -> Video:
    """A :class:`Video` from a path, a Video, or a (T, H, W, 3) uint8 array / list of frames.

    Keyword arguments go to :func:`load_video` for paths; a time range (``start``/``end``) is
    refused for an already sampled Video or a frame array (they carry no source timestamps).
    """
    if isinstance(video, (str, os.PathLike)):
        return load_video(video, num_frames, **kw)
    if kw.get("start") is not None or kw.get("end") is not None:
        raise VideoError("a time range (start/end) needs a video path; got an already decoded "
                         f"{'Video' if isinstance(video, Video) else 'frame array'}")
    if isinstance(video, Video):
        return video
    arr = np.asarray(video) if not isinstance(video, np.ndarray) else video
    if arr.dtype == object or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise VideoError(f"video must be a path, a Video, or a (T, H, W, 3) array; got shape {getattr(arr, 'shape', None)}")
    if arr.dtype != np.uint8:
        raise VideoError(f"video frames must be uint8 RGB, got dtype {arr.dtype}")
    num_frames = check_num_frames(num_frames)
    sel = uniform_indices(arr.shape[0], num_frames)
    notes = []
    if arr.shape[0] < num_frames:
        notes.append(f"only {arr.shape[0]} frames; using all of them (asked for {num_frames})")
    return Video(frames=np.ascontiguousarray(arr[sel]), timestamps=sel.astype(np.float64), indices=sel,
                 total_frames=int(arr.shape[0]), requested=num_frames, source="<array>", notes=notes)


def synthetic_video(num_frames: int = 16, height: int = 96, width: int = 128, seed: int = 0,
                    scenes: int = 3) -> Video:
    """A deterministic synthetic clip: moving shapes over ``scenes`` different backgrounds.

    Scene cuts fall at evenly spaced frames; inside a scene a red disc and a blue square move
    across a gradient background, so consecutive frames are similar and cuts are not.
    """
    num_frames = check_num_frames(num_frames)
    if height < 8 or width < 8:
        raise VideoError(f"synthetic video needs height and width >= 8, got {height}x{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    palettes = rng.integers(70, 236, size=(max(1, scenes), 2, 3)).astype(np.float32)
    scene_of = (np.arange(num_frames) * max(1, scenes)) // num_frames
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        s = int(scene_of[t])
        a, b = palettes[s]
        ramp = ((xx / width) if s % 2 == 0 else (yy / height))[..., None]
        img = a * (1 - ramp) + b * ramp
        phase = (t - np.argmax(scene_of == s)) / max(1, num_frames // max(1, scenes))
        cx = width * (0.2 + 0.6 * phase)
        cy = height * (0.5 + 0.25 * math.sin(2 * math.pi * phase + s))
        r = 0.16 * min(height, width)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (220, 40, 40)
        sx = width * (0.8 - 0.6 * phase)
        sy = height * (0.25 + 0.2 * (s % 3))
        half = 0.11 * min(height, width)
        img[(abs(xx - sx) <= half) & (abs(yy - sy) <= half)] = (40, 60, 220)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    idx = np.arange(num_frames, dtype=np.int64)
    return Video(frames=frames, timestamps=idx / 8.0, indices=idx, total_frames=num_frames,
                 requested=num_frames, fps=8.0, source="<synthetic>")


def write_video(path, frames, fps: float = 8.0, codec: str = "mpeg4", *, pts: Optional[Sequence[int]] = None,
                time_base: Optional[Fraction] = None, rotation: int = 0) -> str:
    """Encode (T, H, W, 3) uint8 RGB ``frames`` to ``path`` with PyAV.

    ``pts`` (with ``time_base``) give explicit presentation timestamps, e.g. for a variable frame
    rate; ``rotation`` stores a counter-clockwise display rotation in the container.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise VideoError(f"frames must be a non-empty (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise VideoError(f"frame height and width must be even for yuv420p, got {W}x{H}")
    path = os.fspath(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec in ("libx264", "h264"):
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if pts is not None:
            if len(pts) != T:
                raise VideoError(f"pts must have one entry per frame ({T}), got {len(pts)}")
            stream.codec_context.time_base = time_base or Fraction(1, 1000)
            stream.time_base = time_base or Fraction(1, 1000)
        # PyAV >= 16 writes the display matrix itself; older PyAV (15.x, which lmms-eval pins)
        # has no writer API for it, so the matrix is written into the MP4/MOV track header after muxing
        patch_rotation = bool(rotation) and not hasattr(stream, "set_display_rotation")
        if patch_rotation and not path.lower().endswith((".mp4", ".mov", ".m4v")):
            raise VideoError(f"rotation on PyAV {av.__version__} can only be stored in an .mp4/.mov file, got {path}")
        if rotation and not patch_rotation:
            stream.set_display_rotation(rotation)
        for t in range(T):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[t]), format="rgb24")
            if pts is not None:
                f.pts = int(pts[t])
                f.time_base = stream.codec_context.time_base
            for pkt in stream.encode(f):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
    if patch_rotation:
        _set_mp4_rotation(path, rotation)
    return path


def _mp4_boxes(buf: bytes, start: int, end: int):
    """(type, content_start, box_end) of the ISO-BMFF boxes in ``buf[start:end]``."""
    i = start
    while i + 8 <= end:
        size, kind = int.from_bytes(buf[i:i + 4], "big"), bytes(buf[i + 4:i + 8])
        head = 8
        if size == 1:  # 64-bit size
            size, head = int.from_bytes(buf[i + 8:i + 16], "big"), 16
        elif size == 0:  # to the end of the file
            size = end - i
        if size < head or i + size > end:
            raise VideoError("malformed MP4 box structure")
        yield kind, i + head, i + size
        i += size


def _set_mp4_rotation(path: str, rotation: float) -> None:
    """Store a counter-clockwise display ``rotation`` (degrees) in the video track header (tkhd)
    of an MP4/MOV file, as FFmpeg's muxer does: matrix (a, b, u, c, d, v, x, y, w) with
    a = d = cos, b = -sin, c = sin in 16.16 fixed point and w = 1 in 2.30. The file is rewritten
    atomically."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    th = math.radians(rotation)
    fix = lambda v: int(round(v * 65536))  # noqa: E731
    c, s = math.cos(th), math.sin(th)
    matrix = [fix(c), fix(-s), 0, fix(s), fix(c), 0, 0, 0, 1 << 30]
    done = False
    for kind, a, b in _mp4_boxes(buf, 0, len(buf)):
        if kind != b"moov":
            continue
        for tkind, ta, tb in _mp4_boxes(buf, a, b):
            if tkind != b"trak":
                continue
            boxes = {k: (x, y) for k, x, y in _mp4_boxes(buf, ta, tb)}
            if b"tkhd" not in boxes or not _is_video_trak(buf, boxes):
                continue
            x, _ = boxes[b"tkhd"]
            off = x + (52 if buf[x] == 1 else 40)  # version 1 has 64-bit times and duration
            buf[off:off + 36] = b"".join(int(v).to_bytes(4, "big", signed=True) for v in matrix)
            done = True
    if not done:
        raise VideoError(f"{path}: no video track header to store the rotation in")
    from .atomic import write_file_atomically

    write_file_atomically(path, bytes(buf), keep_mode=True)


def _is_video_trak(buf, boxes) -> bool:
    """True when the trak's mdia/hdlr handler type is 'vide'."""
    if b"mdia" not in boxes:
        return False
    a, b = boxes[b"mdia"]
    for kind, x, y in _mp4_boxes(buf, a, b):
        if kind == b"hdlr":
            return bytes(buf[x + 8:x + 12]) == b"vide"  # version/flags, pre_defined, handler_type
    return False


__all__ = [
    "DEFAULT_NUM_FRAMES",
    "Video",
    "VideoError",
    "as_video",
    "check_time_range",
    "list_images",
    "load_video",
    "sample_by_time",
    "synthetic_video",
    "uniform_indices",
    "write_video",
]
