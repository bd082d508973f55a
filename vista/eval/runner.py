"""Retention sweeps over multiple-choice video benchmarks, with a per-sample cache and a table.

The model call is injected: ``answer_fn(video_path, prompt) -> (text, stats)``.  A sweep asks a
factory ``make_answer_fn(retention)`` for one such callable per retention, and only when that
retention still has uncached samples (a finished run reloads nothing).  Samples that carry a time
range (MVBench's clipped tasks: ``start``/``end`` seconds in ``Sample.extra``) are answered with
``answer_fn(video_path, prompt, clip=(start, end))`` when the callable takes a ``clip`` keyword
(or ``**kwargs``); an answer function without it still works, on the whole video, and the sweep
warns once.  ``stats`` is a dict; the keys the table uses (all optional) are

* ``flops_ratio`` - prefill FLOPs with pruning / without (or ``prefill_flops`` and
  ``prefill_flops_full``; or ``tokens_before`` / ``tokens_after`` visual tokens and ``text_tokens``,
  from which an analytic ratio is computed, see :func:`approx_prefill_flops`);
* ``ttft_s`` - time to first token in seconds;
* ``peak_mem_bytes`` - peak memory of the call.

Every finished sample is appended (and flushed) to a JSONL cache as soon as it is scored, so an
interrupted run resumes where it stopped.  Each record carries a fingerprint of its question (text,
options, answer, video path): a cached record is reused only for the very same question, so another
annotation file under the same benchmark name is recomputed, not silently scored with old answers
(records from before fingerprints existed are recomputed too).  One sweep may not hold two
benchmarks of the same name.  Samples whose video is missing are reported and never
scored; a sample whose call raised is reported as an error and retried by the next run.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .prompt import build_prompt, extract_letter
from .readers import Benchmark, Sample

AnswerFn = Callable[..., Tuple[str, dict]]  # (video_path, prompt[, clip=(start, end)]) -> (text, stats)
AnswerFnFactory = Callable[[float], AnswerFn]

CACHE_VERSION = 1


def check_retentions(retentions) -> List[float]:
    if isinstance(retentions, (int, float)) and not isinstance(retentions, bool):
        retentions = [retentions]
    try:
        out = [float(r) for r in retentions]
    except (TypeError, ValueError):
        raise ValueError(f"retention must be numbers in (0, 1], got {retentions!r}") from None
    if not out:
        raise ValueError("retention: give at least one value")
    for r in out:
        if not math.isfinite(r) or not 0.0 < r <= 1.0:
            raise ValueError(f"retention must be in (0, 1], got {r}")
    if len(set(out)) != len(out):
        raise ValueError(f"retention values must be distinct, got {out}")
    return out


def retention_key(r: float) -> str:
    return f"{float(r):g}"


def sample_key(sample: Sample, retention: float) -> str:
    return f"{sample.benchmark}/{sample.qid}@{retention_key(retention)}"


def sample_fingerprint(sample: Sample) -> str:
    """A hash of what the model is asked about one sample: question, options, answer, video path
    (and the time range of a clipped sample).  Stored with each cached record, so that a record for
    the same ``benchmark/qid`` but another annotation (another file, an edited question) is not
    reused."""
    import hashlib

    payload = {"question": sample.question, "options": list(sample.options), "answer": sample.answer,
               "video": sample.video}
    clip = sample_clip(sample)
    if clip is not None:
        payload["clip"] = list(clip)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def check_benchmark_names(benchmarks: Sequence[Benchmark]) -> None:
    """Refuse two benchmarks with the same name in one sweep: their records would share cache keys
    (``name/qid@retention``) and one would silently overwrite the other's."""
    seen, dup = set(), []
    for b in benchmarks:
        if b.name in seen and b.name not in dup:
            dup.append(b.name)
        seen.add(b.name)
    if dup:
        raise ValueError(f"benchmarks: {', '.join(repr(d) for d in dup)} given more than once in one sweep; "
                         f"their results would share cache keys and overwrite each other. Run them as "
                         f"separate sweeps (with separate --cache/--out) or merge their annotations")


def sample_clip(sample: Sample) -> Optional[Tuple[Optional[float], Optional[float]]]:
    """The sample's time range ``(start, end)`` in seconds (MVBench's clipped tasks), or None.

    Values that are not numbers are passed on as they are, for the video loader to reject.
    """
    extra = sample.extra or {}
    start, end = extra.get("start"), extra.get("end")
    if start is None and end is None:
        return None
    return _as_seconds(start), _as_seconds(end)


def _as_seconds(v):
    if v is None or isinstance(v, bool):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def accepts_clip(fn) -> bool:
    """Whether ``fn`` can be called with a ``clip=`` keyword."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins / C callables without a signature
        return False
    return any(p.name == "clip" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               or p.kind == p.VAR_KEYWORD for p in params)


# ---------------------------------------------------------------------------------------------
# analytic prefill FLOPs (fallback when the model call does not report them)
# ---------------------------------------------------------------------------------------------

# LLM of LLaVA-OneVision-7B / LLaVA-Video-7B (Qwen2-7B): hidden 3584, 28 layers, MLP 18944, GQA 28/4.
DEFAULT_LLM_DIMS = {"hidden": 3584, "layers": 28, "intermediate": 18944, "heads": 28, "kv_heads": 4}


def approx_prefill_flops(n_tokens: int, hidden: int, layers: int, intermediate: int,
                         heads: Optional[int] = None, kv_heads: Optional[int] = None) -> float:
    """Decoder prefill FLOPs for ``n_tokens`` tokens: per layer 2·P·(params) + attention 4·P²·d.

    params per layer = q/o projections 2d², k/v projections 2d·d_kv (GQA) and a gated MLP 3·d·m.
    """
    d = float(hidden)
    d_kv = d * (kv_heads / heads) if heads and kv_heads else d
    params = 2 * d * d + 2 * d * d_kv + 3 * d * float(intermediate)
    P = float(n_tokens)
    return layers * (2.0 * P * params + 4.0 * P * P * d)


def flops_ratio_from_tokens(tokens_before: float, tokens_after: float, text_tokens: float = 0.0,
                            dims: Optional[dict] = None) -> float:
    dims = dict(DEFAULT_LLM_DIMS, **(dims or {}))
    full = approx_prefill_flops(tokens_before + text_tokens, **dims)
    pruned = approx_prefill_flops(tokens_after + text_tokens, **dims)
    return pruned / full if full > 0 else float("nan")


def _num(v) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def normalize_stats(stats) -> dict:
    """The keys the table uses, from whatever the answer function reported."""
    if stats is None:
        return {}
    if not isinstance(stats, dict):
        raise TypeError(f"answer_fn must return (text, stats: dict), got stats of type {type(stats).__name__}")
    out = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool)) or v is None}
    ratio = _num(stats.get("flops_ratio", stats.get("prefill_flops_ratio")))
    if ratio is None and _num(stats.get("prefill_flops")) and _num(stats.get("prefill_flops_full")):
        ratio = _num(stats["prefill_flops"]) / _num(stats["prefill_flops_full"])
    tb, ta = _num(stats.get("tokens_before")), _num(stats.get("tokens_after"))
    if ratio is None and tb and ta is not None:
        ratio = flops_ratio_from_tokens(tb, ta, _num(stats.get("text_tokens")) or 0.0, stats.get("llm_dims"))
        out["flops_ratio_source"] = "analytic"
    if ratio is not None:
        out["flops_ratio"] = ratio
    timings = stats.get("timings") if isinstance(stats.get("timings"), dict) else {}
    ttft = None
    for src in (stats, timings):
        for k in ("ttft_s", "ttft", "time_to_first_token", "prefill_s", "prefill"):
            if ttft is None and _num(src.get(k)) is not None:
                ttft = _num(src.get(k))
    if ttft is not None:
        out["ttft_s"] = ttft
    mem = _num(stats.get("peak_mem_bytes", stats.get("peak_memory_bytes")))
    if mem is None and _num(stats.get("peak_mem_gb")) is not None:
        mem = _num(stats["peak_mem_gb"]) * 1e9
    if mem is not None:
        out["peak_mem_bytes"] = mem
    out.pop("timings", None)
    return out


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------

class CacheLockedError(ValueError):
    """Another process holds the cache's lock (a second ``vista eval`` on the same output)."""


class ResultCache:
    """Append-only JSONL of scored samples.  Line 1 is ``{"_meta": {...}}`` describing the run
    (model, prompt style, decoding); resuming with a different description is refused, since the
    cached answers would not be comparable.  Keys in ``INFO_ONLY`` (the device) may differ.

    Opening the cache takes an exclusive ``fcntl.flock`` on ``<cache>.lock`` (held until
    :meth:`close`, or until the process ends, however it ends): a second sweep on the same cache
    raises :class:`CacheLockedError` instead of answering every question a second time.  A last
    line without its newline (a write cut short by a kill) is cut off the file on open; any other
    unreadable line (not UTF-8, not JSON, a required field missing or of the wrong type) is skipped,
    that sample is recomputed, and ``problems`` holds one ``"FILE:LINE: what"`` string per line.
    """

    INFO_ONLY = frozenset({"device"})
    REQUIRED = {"key": str, "qid": str, "retention": (int, float), "correct": bool, "stats": dict}

    def __init__(self, path, meta: Optional[dict] = None):
        self.path = Path(path).expanduser()
        self.meta = dict(meta or {}, cache_version=CACHE_VERSION)
        self.records: Dict[str, dict] = {}
        self.dropped_lines = 0
        self.problems: List[str] = []
        self._lock_file = None
        if self.path.exists() and self.path.is_dir():
            raise IsADirectoryError(f"cache: {self.path} is a directory, expected a .jsonl file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if self.path.exists() and self.path.stat().st_size > 0:
                self._load()
            else:
                with open(self.path, "w", encoding="utf-8") as f:
                    f.write(json.dumps({"_meta": self.meta}, sort_keys=True) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            self.close()
            raise

    # -- lock -----------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _lock(self) -> None:
        import fcntl

        f = open(self.lock_path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise CacheLockedError(
                f"cache: {self.path} is in use by another vista eval (lock {self.lock_path} is held); "
                f"wait for that run to finish or give this one another --out/--cache") from None
        except BaseException:
            f.close()
            raise
        self._lock_file = f

    def close(self) -> None:
        """Release the lock (idempotent); the records stay readable."""
        f, self._lock_file = self._lock_file, None
        if f is not None:
            f.close()  # closing the descriptor releases the flock

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort; close() is the API
        try:
            self.close()
        except Exception:
            pass

    # -- reading --------------------------------------------------------------------------------
    def _problem(self, n: int, what: str) -> None:
        msg = f"{self.path}:{n}: {what}"
        self.problems.append(msg)
        warnings.warn(f"cache: {msg}")

    def _record_problem(self, rec) -> Optional[str]:
        if not isinstance(rec, dict):
            return f"a JSON {type(rec).__name__}, expected a record object"
        for name, typ in self.REQUIRED.items():
            if name not in rec:
                return f"record has no {name!r} field"
            v = rec[name]
            if not isinstance(v, typ) or (name == "retention" and isinstance(v, bool)):
                return f"record field {name!r} is a {type(v).__name__}"
        return None

    def _load(self) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            # the last line was cut short by a kill: drop it for good (its sample is recomputed)
            cut = data.rfind(b"\n") + 1
            torn_line = data.count(b"\n", 0, cut) + 1
            if cut == 0:
                raise ValueError(f"cache: {self.path} is not a vista eval cache (its first line is incomplete)")
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
            self.dropped_lines += 1
            self._problem(torn_line, "incomplete last line (a write cut short); removed from the file, "
                                     "that question is recomputed")
        lines = data.split(b"\n")[:-1]
        try:
            head = json.loads(lines[0].decode("utf-8"))
            old = head["_meta"]
            if not isinstance(old, dict):
                raise TypeError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise ValueError(f"cache: {self.path} is not a vista eval cache (first line has no _meta)") from None
        diff = sorted(k for k in set(old) | set(self.meta)
                      if k not in self.INFO_ONLY and old.get(k) != self.meta.get(k))
        if diff:
            detail = ", ".join(f"{k}: cached {old.get(k)!r} vs now {self.meta.get(k)!r}" for k in diff)
            raise ValueError(f"cache: {self.path} was written by a different run ({detail}); "
                             f"use another --cache file or delete this one")
        for n, raw in enumerate(lines[1:], 2):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.dropped_lines += 1
                self._problem(n, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                 f"skipped, that question is recomputed")
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                self.dropped_lines += 1
                self._problem(n, f"not JSON ({e.msg} at column {e.colno}); skipped, that question is recomputed")
                continue
            bad = self._record_problem(rec)
            if bad is not None:
                self.dropped_lines += 1
                self._problem(n, f"{bad}; skipped, that question is recomputed")
                continue
            self.records[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> Optional[dict]:
        return self.records.get(key)

    def add(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    retentions: List[float]
    benchmarks: List[Benchmark]
    records: Dict[str, dict]  # key -> record, for this sweep's samples
    errors: List[dict] = field(default_factory=list)
    computed: int = 0  # samples answered by the model in this call (not from the cache)
    meta: dict = field(default_factory=dict)
    cache_problems: List[str] = field(default_factory=list)  # "FILE:LINE: what" per skipped cache line

    def summary(self) -> dict:
        return summarize(self)


def _score(sample: Sample, retention: float, text, stats, prompt: str, clip=None) -> dict:
    if not isinstance(text, str):
        raise TypeError(f"answer_fn must return (text: str, stats: dict), got text of type {type(text).__name__}")
    pred = extract_letter(text, sample.options)
    rec = {
        "key": sample_key(sample, retention),
        "benchmark": sample.benchmark,
        "qid": sample.qid,
        "retention": float(retention),
        "video": sample.video,
        "category": sample.category,
        "duration": sample.duration,
        "answer": sample.answer,
        "pred": pred,
        "correct": pred == sample.answer,
        "output": text,
        "prompt_chars": len(prompt),
        "stats": normalize_stats(stats),
        "fingerprint": sample_fingerprint(sample),
    }
    if clip is not None:  # the time range the answer function was given
        rec["clip"] = list(clip)
    return rec


def run_sweep(benchmarks: Sequence[Benchmark], retentions, make_answer_fn: AnswerFnFactory, cache,
              prompt_style: str = "llava", meta: Optional[dict] = None, progress: bool = True,
              fail_fast: bool = False) -> SweepResult:
    """One pass per retention over every benchmark's samples; cached samples are not recomputed.

    ``cache`` is a path (a :class:`ResultCache` is opened on it with ``meta``) or a ResultCache.
    """
    retentions = check_retentions(retentions)
    if isinstance(benchmarks, Benchmark):
        benchmarks = [benchmarks]
    if not benchmarks:
        raise ValueError("benchmarks: give at least one benchmark")
    if not callable(make_answer_fn):
        raise TypeError("make_answer_fn must be a callable retention -> answer_fn")
    check_benchmark_names(benchmarks)
    meta = dict(meta or {}, prompt_style=prompt_style)
    if not isinstance(cache, ResultCache):
        with ResultCache(cache, meta) as opened:  # holds the cache's lock for the whole sweep
            return _sweep(benchmarks, retentions, make_answer_fn, opened, prompt_style, progress, fail_fast)
    return _sweep(benchmarks, retentions, make_answer_fn, cache, prompt_style, progress, fail_fast)


def _sweep(benchmarks, retentions, make_answer_fn, cache: "ResultCache", prompt_style: str, progress: bool,
           fail_fast: bool) -> SweepResult:
    """The sweep once ``cache`` is open: warn about missing videos and stale cache records, then one
    pass per retention (see :func:`_sweep_retention`)."""
    result = SweepResult(retentions, list(benchmarks), {}, meta=cache.meta)
    result.cache_problems = list(cache.problems)
    samples = [s for b in benchmarks for s in b.samples]
    fingerprints = [sample_fingerprint(s) for s in samples]
    for b in benchmarks:
        if b.missing:
            warnings.warn(f"{b.title}: {len(b.missing)} question(s) skipped, video not found "
                          f"(e.g. {b.missing[0].extra.get('video_ref', b.missing[0].video)}); "
                          f"they are reported, not counted")
    valid = _reusable_records(cache, samples, fingerprints, retentions)
    for r in retentions:
        _sweep_retention(result, samples, r, valid, make_answer_fn, cache, prompt_style, progress, fail_fast)
    return result


def _reusable_records(cache: "ResultCache", samples: List[Sample], fingerprints: List[str],
                      retentions: List[float]) -> Dict[str, dict]:
    """key -> cached record, for the records written for this very question (same fingerprint); warns
    about the others (no fingerprint: an older version; another fingerprint: another annotation)."""
    valid = {}
    n_unmarked = n_changed = 0
    for r in retentions:
        for s, fp in zip(samples, fingerprints):
            rec = cache.get(sample_key(s, r))
            if rec is None:
                continue
            if rec.get("fingerprint") == fp:
                valid[sample_key(s, r)] = rec
            elif rec.get("fingerprint") is None:
                n_unmarked += 1
            else:
                n_changed += 1
    if n_unmarked:
        warnings.warn(f"cache: {n_unmarked} cached record(s) in {cache.path} have no question fingerprint "
                      f"(written by an older version); they are treated as stale and recomputed")
    if n_changed:
        warnings.warn(f"cache: {n_changed} cached record(s) in {cache.path} were for a different question "
                      f"(same benchmark/qid, but another question, options, answer or video: another "
                      f"annotation file?); they are recomputed")
    return valid


def _sweep_retention(result: SweepResult, samples: List[Sample], r: float, valid: Dict[str, dict],
                     make_answer_fn: AnswerFnFactory, cache: "ResultCache", prompt_style: str, progress: bool,
                     fail_fast: bool) -> None:
    """One retention: take its reusable records into ``result``, then answer, score and cache the
    other samples one by one (the progress bar starts at the cached count and shows the accuracy)."""
    pending = [s for s in samples if sample_key(s, r) not in valid]
    for s in samples:
        if sample_key(s, r) in valid:
            result.records[sample_key(s, r)] = valid[sample_key(s, r)]
    done = [result.records[sample_key(s, r)] for s in samples if sample_key(s, r) in result.records]
    n_correct = sum(1 for rec in done if rec["correct"])
    n_done = len(done)
    if not pending:
        return
    answer_fn, takes_clip = _answer_fn_for(make_answer_fn, r, pending)
    bar = _progress(len(samples), n_done, f"retention {retention_key(r)}", progress)
    try:
        for s in pending:
            rec = _answer_sample(result, s, r, answer_fn, takes_clip, prompt_style, fail_fast)
            if rec is None:  # the call failed: reported in result.errors
                bar.update(1)
                continue
            cache.add(rec)
            result.records[rec["key"]] = rec
            result.computed += 1
            n_done += 1
            n_correct += bool(rec["correct"])
            bar.set_postfix_str(f"acc {100.0 * n_correct / n_done:.1f}%")
            bar.update(1)
    finally:
        bar.close()


def _answer_fn_for(make_answer_fn: AnswerFnFactory, r: float, pending: List[Sample]) -> Tuple[AnswerFn, bool]:
    """(the answer function for retention ``r``, whether it takes ``clip=``); warns when it does not
    but some pending samples give a time range."""
    answer_fn = make_answer_fn(r)
    if not callable(answer_fn):
        raise TypeError(f"make_answer_fn({r}) must return a callable answer_fn(video, prompt)")
    takes_clip = accepts_clip(answer_fn)
    n_clipped = sum(1 for s in pending if sample_clip(s) is not None)
    if n_clipped and not takes_clip:
        warnings.warn(f"{n_clipped} question(s) give a time range (start/end) but answer_fn takes no "
                      f"clip= keyword; they are answered on the whole video")
    return answer_fn, takes_clip


def _answer_sample(result: SweepResult, s: Sample, r: float, answer_fn: AnswerFn, takes_clip: bool,
                   prompt_style: str, fail_fast: bool) -> Optional[dict]:
    """The scored record of one sample (with its ``latency_s``), or None when the call raised: then
    the error goes to ``result.errors`` and a warning (or is raised again with ``fail_fast``)."""
    prompt = build_prompt(s.question, s.options, prompt_style)
    t0 = time.perf_counter()
    clip = sample_clip(s) if takes_clip else None
    try:
        if clip is None:
            text, stats = answer_fn(s.video, prompt)
        else:
            text, stats = answer_fn(s.video, prompt, clip=clip)
        rec = _score(s, r, text, stats, prompt, clip)
    except Exception as e:  # noqa: BLE001 - one bad video must not end a long sweep
        if fail_fast:
            raise
        result.errors.append({"key": sample_key(s, r), "benchmark": s.benchmark, "qid": s.qid,
                              "retention": r, "video": s.video, "error": f"{type(e).__name__}: {e}"})
        warnings.warn(f"{s.benchmark}/{s.qid} at retention {r}: {type(e).__name__}: {e}")
        return None
    rec["stats"].setdefault("latency_s", time.perf_counter() - t0)
    return rec


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="q", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# summary and table
# ---------------------------------------------------------------------------------------------

def _acc(recs: Iterable[dict]) -> dict:
    recs = list(recs)
    n = len(recs)
    c = sum(1 for r in recs if r["correct"])
    return {"n": n, "correct": c, "accuracy": 100.0 * c / n if n else None}


def _group(recs: List[dict], field_: str) -> Dict[str, dict]:
    keys = sorted({r.get(field_) for r in recs if r.get(field_) is not None}, key=_order_key)
    return {k: _acc(r for r in recs if r.get(field_) == k) for k in keys}


_DURATION_ORDER = {"short": 0, "medium": 1, "long": 2, "8-15s": 0, "15-60s": 1, "180-600s": 2, "900-3600s": 3}


def _order_key(k):
    return (_DURATION_ORDER.get(str(k), 99), str(k))


def _mean(vals) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(result: SweepResult) -> dict:
    """Accuracy per benchmark, category and duration class for each retention; relative accuracy
    against retention 1.0 (when swept), on the questions answered at both retentions (their count
    in ``relative_n``); mean prefill FLOPs ratio, mean TTFT and peak memory."""
    out = {
        "meta": dict(result.meta),
        "retentions": [float(r) for r in result.retentions],
        "benchmarks": {},
        "results": {},
        "errors": list(result.errors),
    }
    for b in result.benchmarks:
        out["benchmarks"][b.name] = {
            "title": b.title, "source": b.source, "questions": len(b.samples) + len(b.missing),
            "scored": len(b.samples),
            "missing_videos": [{"qid": s.qid, "video": s.extra.get("video_ref", s.video)} for s in b.missing],
            "invalid": list(b.invalid),
        }
    paired: Dict[str, Dict[str, Dict[str, dict]]] = {}  # retention key -> benchmark -> qid -> record
    for r in result.retentions:
        out["results"][retention_key(r)] = _retention_row(result, r, paired.setdefault(retention_key(r), {}))
    _add_relative(out["results"], paired)
    return out


def _retention_row(result: SweepResult, r: float, paired: Dict[str, Dict[str, dict]]) -> dict:
    """The summary row of retention ``r``: accuracy per benchmark and on average, mean costs, errors.
    Fills ``paired`` (benchmark -> qid -> record) for the relative accuracy."""
    per = {}
    all_recs = []
    for b in result.benchmarks:
        recs = [result.records[k] for k in (sample_key(s, r) for s in b.samples) if k in result.records]
        paired[b.name] = {x["qid"]: x for x in recs}
        all_recs += recs
        entry = _acc(recs)
        entry["unparsed"] = sum(1 for x in recs if x.get("pred") is None)
        entry["by_category"] = _group(recs, "category")
        entry["by_duration"] = _group(recs, "duration")
        entry["pending"] = len(b.samples) - len(recs)
        per[b.name] = entry
    accs = [e["accuracy"] for e in per.values()]
    return {
        "benchmarks": per,
        "average": _mean(accs) if all(a is not None for a in accs) else None,
        "flops_ratio": _mean(x["stats"].get("flops_ratio") for x in all_recs),
        "ttft_s": _mean(x["stats"].get("ttft_s") for x in all_recs),
        "latency_s": _mean(x["stats"].get("latency_s") for x in all_recs),
        "peak_mem_bytes": max((x["stats"]["peak_mem_bytes"] for x in all_recs
                               if x["stats"].get("peak_mem_bytes") is not None), default=None),
        "tokens_before": _mean(x["stats"].get("tokens_before") for x in all_recs),
        "tokens_after": _mean(x["stats"].get("tokens_after") for x in all_recs),
        "errors": sum(1 for e in result.errors if e["retention"] == r),
    }


def _add_relative(results: Dict[str, dict], paired: Dict[str, Dict[str, Dict[str, dict]]]) -> None:
    """Set ``relative`` and ``relative_n`` in every row of ``results`` (None without retention 1.0).

    Relative accuracy compares retention r with retention 1.0 on the same questions: those that
    have a record at both (a question that failed at one of them would otherwise make the two
    accuracies cover different sets).  ``relative_n`` gives the number of questions used.
    """
    base_key = retention_key(1.0)
    for key, row in results.items():
        rel = rel_n = None
        if base_key in results:
            rel, rel_n = {}, {}
            accs_r, accs_b = [], []
            for name in row["benchmarks"]:
                cur, base = paired[key][name], paired[base_key][name]
                both = [q for q in cur if q in base]
                a_r = _acc(cur[q] for q in both)["accuracy"]
                a_b = _acc(base[q] for q in both)["accuracy"]
                accs_r.append(a_r)
                accs_b.append(a_b)
                rel[name] = (100.0 * a_r / a_b) if a_b and a_r is not None else None
                rel_n[name] = len(both)
            ok = all(a is not None for a in accs_r + accs_b)
            avg_r, avg_b = (_mean(accs_r), _mean(accs_b)) if ok else (None, None)
            rel["average"] = (100.0 * avg_r / avg_b) if avg_b and avg_r is not None else None
            rel_n["average"] = sum(v for v in rel_n.values())
        row["relative"] = rel
        row["relative_n"] = rel_n


def _pct(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


_TABLE_NOTE = ("Accuracy in %. Rel. % = average accuracy relative to retention 100% (needs 1.0 in the sweep), "
               "on the questions answered at both retentions. "
               "Prefill FLOPs ratio: LLM prefill FLOPs with pruning / without (visual + text tokens), mean over "
               "questions. TTFT: video decode to first generated token, mean; Latency: whole call, mean. "
               "Peak mem: the largest of the per-question peaks (CUDA: max allocated; CPU: the process's peak RSS).")


def render_markdown(summary: dict) -> str:
    """``results.md``: the run's description, the main table (one row per retention, laid out like
    the paper's Tables 1-2) and its note, a section per benchmark, the errors."""
    meta = summary.get("meta", {})
    lines = ["# Vista-LLM evaluation", ""]
    info = [f"{k}: `{meta[k]}`" for k in ("model", "scout", "prompt_style", "max_new_tokens", "device") if meta.get(k)]
    if info:
        lines += ["; ".join(info), ""]
    lines += _main_table(summary)
    lines += ["", _TABLE_NOTE, ""]
    for name in summary["benchmarks"]:
        lines += _benchmark_section(summary, name)
    if summary["errors"]:
        lines += ["## Errors (not scored; retried on the next run)", ""]
        for e in summary["errors"][:20]:
            lines.append(f"- {e['benchmark']}/{e['qid']} @ {100 * e['retention']:g}%: {e['error']}")
        lines.append("")
    return "\n".join(lines)


def _main_table(summary: dict) -> List[str]:
    """The main table's lines: per retention the FLOPs ratio, each benchmark's accuracy (Video-MME
    also per duration class), the average, its relative %, TTFT, latency and peak memory."""
    benches = list(summary["benchmarks"])
    head = ["Retention", "Prefill FLOPs ratio"]
    for name in benches:
        title = summary["benchmarks"][name]["title"]
        if name == "videomme":
            durs = _durations(summary, name)
            head += [f"{title} {d}" for d in durs]
        head.append(title)
    head += ["Average", "Rel. %", "TTFT (s)", "Latency (s)", "Peak mem (GB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["retentions"]:
        row = summary["results"][retention_key(r)]
        cells = [f"{100 * r:g}%", "–" if row["flops_ratio"] is None else f"{100 * row['flops_ratio']:.1f}%"]
        for name in benches:
            e = row["benchmarks"][name]
            if name == "videomme":
                cells += [_pct(e["by_duration"].get(d, {}).get("accuracy")) for d in _durations(summary, name)]
            cells.append(_pct(e["accuracy"]))
        rel = row["relative"] or {}
        cells += [_pct(row["average"]), _pct(rel.get("average"), 1), _pct(row["ttft_s"], 3),
                  _pct(row["latency_s"], 3),
                  "–" if row["peak_mem_bytes"] is None else f"{row['peak_mem_bytes'] / 1e9:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _benchmark_section(summary: dict, name: str) -> List[str]:
    """One benchmark's section: questions scored/skipped, a table of accuracy per split (overall,
    each duration class and category) and retention, unparsed replies, missing videos."""
    rets = summary["retentions"]
    binfo = summary["benchmarks"][name]
    entries = [summary["results"][retention_key(r)]["benchmarks"][name] for r in rets]
    lines = [f"## {binfo['title']}", ""]
    n_q = binfo["questions"]
    n_miss, n_bad = len(binfo["missing_videos"]), len(binfo["invalid"])
    lines.append(f"{binfo['scored']} of {n_q} questions scored"
                 + (f"; {n_miss} skipped (video not found)" if n_miss else "")
                 + (f"; {n_bad} invalid annotation(s) skipped" if n_bad else "") + ".")
    lines.append("")
    head = ["Split"] + [f"{100 * r:g}%" for r in rets]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| **overall** | " + " | ".join(_cell(e) for e in entries) + " |")
    for kind, label in (("by_duration", "duration"), ("by_category", "category")):
        keys = []
        for e in entries:
            for k in e[kind]:
                if k not in keys:
                    keys.append(k)
        for k in sorted(keys, key=_order_key):
            lines.append(f"| {label}: {k} | " + " | ".join(_cell(e[kind].get(k)) for e in entries) + " |")
    unparsed = [e["unparsed"] for e in entries]
    if any(unparsed):
        lines += ["", "Replies with no recognisable option letter (scored wrong): "
                  + ", ".join(f"{100 * r:g}%: {u}" for r, u in zip(rets, unparsed))]
    if binfo["missing_videos"]:
        shown = binfo["missing_videos"][:10]
        lines += ["", "Missing videos: " + ", ".join(f"`{m['video']}`" for m in shown)
                  + (f" and {n_miss - len(shown)} more" if n_miss > len(shown) else "")]
    lines.append("")
    return lines


def _cell(e: Optional[dict]) -> str:
    if not e or not e.get("n"):
        return "–"
    return f"{e['accuracy']:.2f} ({e['correct']}/{e['n']})"


def _durations(summary: dict, name: str) -> List[str]:
    keys = []
    for row in summary["results"].values():
        for k in row["benchmarks"][name]["by_duration"]:
            if k not in keys:
                keys.append(k)
    return sorted(keys, key=_order_key)


def write_outputs(summary: dict, out_dir) -> Tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``out_dir``."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "results.json", out / "results.md"
    summary = dict(summary, written=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    jp.write_text(json.dumps(summary, indent=2, sort_keys=False), encoding="utf-8")
    mp.write_text(render_markdown(summary) + "\n", encoding="utf-8")
    return jp, mp


# ---------------------------------------------------------------------------------------------
# the real model: VistaPipeline as an answer function
# ---------------------------------------------------------------------------------------------

def pipeline_answer_factory(model_path, scout_path=None, device: str = "cpu", dtype=None,
                            max_new_tokens: int = 16, num_frames: Optional[int] = None,
                            config_overrides: Optional[dict] = None) -> AnswerFnFactory:
    """A factory retention -> answer_fn backed by :class:`vista.pipeline.VistaPipeline`.

    The model is loaded once, on first use, and re-configured for each retention.  Decoding is
    greedy (``ask``'s default), ``max_new_tokens`` short as in lmms-eval (16); ``num_frames``
    defaults to the pipeline's (64, the paper's protocol).  A sample's time range (``clip``, from
    MVBench's ``start``/``end``) goes to ``ask(..., clip=)``, so only that part of a video file is
    sampled; for an image-folder video (MVBench's Episodic Reasoning frame folders, whose frame
    rate the folder does not record) the range is not applied -- the whole folder is sampled and
    the stats say ``clip_ignored``.  Stats per call: visual tokens before /
    after pruning, prompt text tokens, the LLM prefill FLOPs ratio, TTFT (video decode to first
    token) and peak memory (CUDA: max allocated during the call; CPU: the process's peak RSS).
    """
    from vista.config import VistaConfig

    state: dict = {}

    def factory(retention: float) -> AnswerFn:
        cfg = VistaConfig(retention=retention, **(config_overrides or {}))
        pipe = _pipeline_for(state, cfg, model_path, scout_path, device, dtype, num_frames)
        return _pipeline_answer_fn(pipe, state.get("dims"), device, max_new_tokens)

    return factory


def _pipeline_for(state: dict, cfg, model_path, scout_path, device, dtype, num_frames):
    """The pipeline kept in ``state`` set to ``cfg``: loaded on first use (``state["pipe"]`` and the
    LLM dimensions ``state["dims"]``), re-configured afterwards."""
    from vista.pipeline import VistaPipeline

    pipe = state.get("pipe")
    if pipe is None:
        kw = {} if num_frames is None else {"num_frames": num_frames}
        # no feature cache: each question is measured from scratch, so TTFT and peak memory
        # stay per-question costs, comparable across retentions (see "Ask many questions")
        kw["cache_bytes"] = 0
        pipe = VistaPipeline(model_path, scout_path=scout_path, config=cfg, device=device, dtype=dtype, **kw)
        state["pipe"] = pipe
        state["dims"] = _llm_dims(pipe.model)
    else:
        _set_config(pipe, cfg)
    return pipe


def _pipeline_answer_fn(pipe, dims: Optional[dict], device: str, max_new_tokens: int) -> AnswerFn:
    """``answer_fn(video, prompt, clip=None)`` asking ``pipe``; its stats add to :func:`_stats_from_ask`
    the prompt's text tokens, the LLM dimensions and FLOPs ratio, peak memory, ``clip_ignored``."""

    def answer_fn(video: str, prompt: str, clip=None):
        import torch

        clip_ignored = clip is not None and os.path.isdir(video)
        if clip_ignored:
            clip = None
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if clip is None:
            res = pipe.ask(video, prompt, max_new_tokens=max_new_tokens)
        else:
            res = pipe.ask(video, prompt, max_new_tokens=max_new_tokens, clip=clip)
        stats = _stats_from_ask(res)
        if clip_ignored:
            stats["clip_ignored"] = True
        text_tokens = _text_tokens(pipe, prompt)
        if text_tokens is not None:
            stats["text_tokens"] = text_tokens
        if dims:
            stats["llm_dims"] = dims
        if stats.get("tokens_before"):
            stats["flops_ratio"] = _pipeline_flops_ratio(stats)
        if cuda:
            stats["peak_mem_bytes"] = float(torch.cuda.max_memory_allocated())
        elif "peak_mem_bytes" not in stats:
            stats["peak_mem_bytes"] = _rss_peak_bytes()
        return str(getattr(res, "answer", res)), stats

    return answer_fn


def _set_config(pipe, cfg) -> None:
    """Point an existing pipeline (and its patched model) at another VistaConfig."""
    for name in ("set_config", "configure"):
        fn = getattr(pipe, name, None)
        if callable(fn):
            fn(cfg)
            return
    from vista import models

    remove, apply = getattr(models, "remove_vista", None), getattr(models, "apply_vista", None)
    if callable(remove) and callable(apply):
        remove(pipe.model)
        apply(pipe.model, cfg, scout=getattr(pipe, "scout", None), processor=getattr(pipe, "processor", None))
    else:  # pragma: no cover - older models module: the patch reads its config from the state
        st = models.common.get_state(pipe.model)
        if st is None:
            raise RuntimeError("cannot change the retention of this pipeline: the model is not patched")
        st.config = cfg
    pipe.config = cfg


def _llm_dims(model) -> Optional[dict]:
    cfg = getattr(model, "config", None)
    text = getattr(cfg, "text_config", None) or cfg
    try:
        dims = {"hidden": int(text.hidden_size), "layers": int(text.num_hidden_layers),
                "intermediate": int(text.intermediate_size)}
    except (AttributeError, TypeError):
        return None
    heads, kv = getattr(text, "num_attention_heads", None), getattr(text, "num_key_value_heads", None)
    if heads and kv:
        dims.update(heads=int(heads), kv_heads=int(kv))
    return dims


def _text_tokens(pipe, prompt: str) -> Optional[int]:
    """Tokens of the chat-formatted prompt other than the video placeholder."""
    try:
        text = pipe.build_prompt(prompt)
        tok = getattr(pipe.processor, "tokenizer", None)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return max(0, len(ids) - 1)
    except Exception:  # noqa: BLE001 - only an estimate for the FLOPs ratio
        return None


def _stats_from_ask(res) -> dict:
    stats = {}
    for k in ("tokens_before", "tokens_after", "prefill_flops", "prefill_flops_full", "flops_ratio",
              "ttft_s", "peak_mem_bytes", "new_tokens"):
        v = getattr(res, k, None)
        if _num(v) is not None:
            stats[k] = _num(v)
    frames = getattr(res, "frames", None)
    if isinstance(frames, int):
        stats["frames"] = frames
    timings = getattr(res, "timings", None)
    if isinstance(timings, dict):
        t = {k: float(v) for k, v in timings.items() if _num(v) is not None}
        for k, v in t.items():
            stats[f"time_{k}"] = v
        if "ttft_s" not in stats and "total" in t and "generate" in t:
            stats["ttft_s"] = max(0.0, t["total"] - t["generate"])  # video decode .. first token
    return stats


def _pipeline_flops_ratio(stats: dict) -> Optional[float]:
    """Analytic LLM prefill FLOPs ratio from the token counts and the model's own LLM dimensions."""
    return flops_ratio_from_tokens(stats["tokens_before"], stats["tokens_after"], stats.get("text_tokens", 0.0),
                                   stats.get("llm_dims"))


def _rss_peak_bytes() -> Optional[float]:
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(kb) * (1 if sys.platform == "darwin" else 1024)
    except Exception:  # pragma: no cover
        return None
