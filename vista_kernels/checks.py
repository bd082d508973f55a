"""Input guards shared by every op (reference and Triton alike).

Each public op validates its arguments here before any math runs, so a malformed call fails with a
``ValueError``/``TypeError`` naming the argument instead of an ``IndexError`` deep inside a kernel.

Shape, dtype and device checks are free (host metadata). Value checks (finite, not too large) read
the data and synchronise with a GPU once: :func:`check_finite` scans any number of tensors with one
host round trip, and callers that already scanned (``prune_video``) or whose inputs come from a
model's projector pass ``finite=False`` / ``check_finite=False``. While ``torch.compile`` traces,
value checks are skipped (they would break the graph).
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch

_STATE = threading.local()

#: Largest |x| accepted in a token tensor of D dims: squared norms and Gram entries (up to
#: 2 * D * max|x|^2) must stay finite in float32. ``token_limit(D)`` gives the bound.
_FLT_MAX = float(torch.finfo(torch.float32).max)


def token_limit(D: int) -> float:
    """Largest |x| whose pairwise geometry cannot overflow float32 for D-dim tokens."""
    return math.sqrt(_FLT_MAX / (4.0 * max(1, int(D))))


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False


def check_finite(limits=None, **named: torch.Tensor) -> None:
    """Raise ValueError naming the first argument that holds NaN/inf (or, for names in
    ``limits``, a magnitude above ``limits[name]``); one host synchronisation for all of them.

    Args:
        limits: optional dict name -> largest allowed |value|.
        named: tensors to scan (None entries are skipped).
    """
    check_values(named, limits)


def check_values(named, limits=None, conditions=()) -> None:
    """:func:`check_finite` of the tensors in ``named`` plus ``conditions``: (ok, message) pairs
    whose ``ok`` is a 0-dim bool tensor (a ValueError with ``message`` when False), all read with
    the same single host synchronisation."""
    if _compiling():
        return
    for k, v in named.items():
        if v is not None and not isinstance(v, torch.Tensor):
            raise TypeError(f"{k} must be a torch.Tensor (or None) to be scanned, got {type(v).__name__}")
        if isinstance(v, torch.Tensor) and v.is_complex():
            raise TypeError(f"{k} must be a real tensor, got dtype {v.dtype}")
    limits = {} if limits is None else limits
    if not isinstance(limits, dict):
        raise TypeError(f"limits must be a dict of name -> largest |value|, got {type(limits).__name__}")
    for k, lim in limits.items():
        if isinstance(lim, bool) or not isinstance(lim, (int, float)) or not lim >= 0:
            raise ValueError(f"limits[{k!r}] must be a number >= 0, got {lim!r}")
    items = [(k, v) for k, v in named.items() if isinstance(v, torch.Tensor) and v.numel()]
    conditions = list(conditions)
    if not items and not conditions:
        return
    flags = [ok.reshape(1) for ok, _ in conditions]
    for name, t in items:
        lo, hi = torch.aminmax(t.detach() if t.dtype != torch.bool else t.detach().to(torch.uint8))
        ok = torch.isfinite(lo) & torch.isfinite(hi)  # in t's own dtype (a large fp64 is finite)
        if name in limits:
            ok = ok & (torch.maximum(-lo.double(), hi.double()) <= limits[name])
        flags.append(ok.reshape(1))
    bad = (~torch.cat(flags)).tolist()  # the one sync
    for b, (_, msg) in zip(bad, conditions):
        if b:
            raise ValueError(msg)
    bad = bad[len(conditions):]
    for (name, t), b in zip(items, bad):
        if b:
            lo, hi = torch.aminmax(t.detach() if t.dtype != torch.bool else t.detach().to(torch.uint8))
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                raise ValueError(f"{name} contains NaN or inf values")
            raise ValueError(
                f"{name} has values up to {max(-float(lo), float(hi)):.3g} in magnitude; the pairwise "
                f"geometry needs |{name}| <= {limits[name]:.3g} (float32 squares of {t.shape[-1]}-dim tokens "
                "would overflow): rescale the tokens"
            )


@contextlib.contextmanager
def trusted_inputs():
    """Within this block the (F, N, D) token tensors were already scanned for NaN/inf by the caller
    (e.g. prune_videos), so nested ops skip that full pass over x. Shape/dtype checks still run."""
    prev = getattr(_STATE, "trusted", False)
    _STATE.trusted = True
    try:
        yield
    finally:
        _STATE.trusted = prev


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN/inf (one aminmax pass: NaN and inf propagate to min/max)."""
    if t.numel() == 0 or _compiling():
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tokens(x, name: str = "x", finite: bool = True) -> torch.Tensor:
    """``x`` must be a (F, N, D) float32/float16/bfloat16 tensor with N, D >= 1 and finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (F, N, D), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (F, N, D) (3 dims), got shape {tuple(x.shape)}")
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device; pass a tensor with data (CPU or CUDA)")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f"{name} must have N >= 1 tokens and D >= 1 dims, got shape {tuple(x.shape)}")
    if finite and not getattr(_STATE, "trusted", False):
        check_finite(limits={name: token_limit(x.shape[-1])}, **{name: x})
    return x


def check_mask(mask, x: torch.Tensor, name: str) -> torch.Tensor:
    """``mask`` must be a (F, N) bool tensor on x's device."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype bool and shape (F, N), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name} must have shape (F, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{name} is on {mask.device} but x is on {x.device}; put both on the same device")
    return mask


def check_valid(valid, x: torch.Tensor) -> torch.Tensor:
    """Return a (F, N) bool mask: ``valid`` checked, or all-True when None."""
    if valid is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return check_mask(valid, x, "valid")


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (number of nearest neighbours), got {k}")
    return k


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def check_rho(rho, x: torch.Tensor) -> torch.Tensor:
    return check_token_floats(rho, x, "rho", dims="(F, N)")


def check_k_keep(k_keep, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``k_keep``: an int or an integer tensor (F,), each 0 <= k_keep[f] <= valid tokens of frame f."""
    F = x.shape[0]
    if isinstance(k_keep, bool):
        raise TypeError("k_keep must be an int or an integer tensor of shape (F,), got a bool")
    if isinstance(k_keep, int):
        k_keep = torch.full((F,), k_keep, dtype=torch.int64, device=x.device)
    elif isinstance(k_keep, torch.Tensor):
        if k_keep.dtype.is_floating_point or k_keep.dtype == torch.bool or k_keep.is_complex():
            raise TypeError(f"k_keep must be an integer tensor, got dtype {k_keep.dtype}")
        if k_keep.dim() == 0:
            k_keep = k_keep.reshape(1).expand(F)
        if tuple(k_keep.shape) != (F,):
            raise ValueError(f"k_keep must have shape (F,) = ({F},), got {tuple(k_keep.shape)}")
        if k_keep.device != x.device:
            raise ValueError(f"k_keep is on {k_keep.device} but x is on {x.device}; put both on the same device")
        k_keep = k_keep.to(torch.int64)
    else:
        raise TypeError(f"k_keep must be an int or an integer tensor of shape (F,), got {type(k_keep).__name__}")
    if F and bool((k_keep < 0).any()):
        raise ValueError(f"k_keep must be >= 0, got min {int(k_keep.min())}")
    n_valid = valid.sum(1)
    if F and bool((k_keep > n_valid).any()):
        f = int(torch.nonzero(k_keep > n_valid)[0, 0])
        raise ValueError(
            f"k_keep[{f}] = {int(k_keep[f])} is larger than the {int(n_valid[f])} valid tokens of frame {f}"
        )
    return k_keep


def count_conditions(budgets, k_foveal, valid, num_kept: int, N: int):
    """(ok, message) pairs for :func:`check_values`: the value contract of ``prune_frames``'s
    counts (1 <= budgets[f] <= valid tokens of frame f, 0 for a frame without any;
    0 <= k_foveal[f] <= budgets[f]; budgets.sum() == num_kept). Builds 0-dim tensors only (no sync)."""
    n_valid = valid.sum(1) if valid is not None else torch.full_like(budgets, N)
    lo = torch.clamp(n_valid, max=1)
    conds = [
        (((budgets >= lo) & (budgets <= n_valid)).all(),
         "budgets must satisfy 1 <= budgets[f] <= the valid tokens of frame f (0 for a frame without valid tokens)"),
        (budgets.sum() == num_kept, f"budgets must sum to num_kept = {num_kept}"),
    ]
    if k_foveal is not None:
        conds.append((((k_foveal >= 0) & (k_foveal <= budgets)).all(),
                      "k_foveal must satisfy 0 <= k_foveal[f] <= budgets[f]"))
    return conds


def check_counts(counts, x: torch.Tensor, name: str) -> torch.Tensor:
    """``counts``: an integer tensor of shape (F,) on x's device; returned as int64 (values are not
    read: that would synchronise with a GPU)."""
    F = x.shape[0]
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor of shape (F,) = ({F},), got {type(counts).__name__}")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {counts.dtype}")
    if tuple(counts.shape) != (F,):
        raise ValueError(f"{name} must have shape (F,) = ({F},), got {tuple(counts.shape)}")
    if counts.device != x.device:
        raise ValueError(f"{name} is on {counts.device} but x is on {x.device}; put both on the same device")
    return counts.to(torch.int64)


def check_token_floats(t, x: torch.Tensor, name: str, dims: str = "(T, N)", finite: bool = True) -> torch.Tensor:
    """``t`` is a floating tensor of one value per token of ``x`` (shape ``x.shape[:2]``, written
    ``dims`` in the messages) on x's device, finite unless ``finite=False``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name} must have shape {dims} = {tuple(x.shape[:2])}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put both on the same device")
    if finite and not all_finite(t):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def check_scores(scores, x: torch.Tensor, name: str = "scout_scores", finite: bool = True) -> torch.Tensor:
    return check_token_floats(scores, x, name, finite=finite)


def check_aggregate_args(x, keep, alpha, valid):
    """anchor_aggregate's arguments: (x, keep, alpha, valid) checked, ``valid`` filled in when None.

    ``keep`` must be a subset of ``valid`` with at least one kept token in every frame that has
    valid tokens."""
    x = check_tokens(x)
    keep = check_mask(keep, x, "keep")
    alpha = check_alpha(alpha)
    valid = check_valid(valid, x)
    if bool((keep & ~valid).any()):
        raise ValueError("keep marks tokens that are not valid; keep must be a subset of valid")
    lonely = valid.any(1) & ~keep.any(1)
    if bool(lonely.any()):
        f = int(torch.nonzero(lonely)[0, 0])
        raise ValueError(f"keep has no kept token in frame {f}, which has valid tokens to aggregate")
    return x, keep, alpha, valid


def check_attn(attn) -> torch.Tensor:
    """``attn`` must be a (B, heads, queries, patches) floating tensor with at least one head,
    query and patch, and finite values."""
    if not isinstance(attn, torch.Tensor):
        raise TypeError(f"attn must be a torch.Tensor of shape (B, heads, queries, patches), got {type(attn).__name__}")
    if not attn.is_floating_point():
        raise TypeError(f"attn must be a floating tensor, got dtype {attn.dtype}")
    if attn.dim() != 4:
        raise ValueError(f"attn must have shape (B, heads, queries, patches), got shape {tuple(attn.shape)}")
    if min(attn.shape[1:]) < 1:
        raise ValueError(f"attn needs at least one head, query and patch, got shape {tuple(attn.shape)}")
    if not all_finite(attn):
        raise ValueError("attn contains NaN or inf values")
    return attn
