"""User-facing configuration of the Vista pruner (defaults from PAPER.md §3.2–3.4, §4.1)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional

NEWLINE_MODES = ("one", "none")
BACKENDS = ("auto", "triton", "torch")


def _check_number(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value}")
    return value


def check_retention(retention) -> float:
    """retention must be a number in (0, 1]."""
    return _check_number("retention", retention, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class VistaConfig:
    """Settings of the pruner.

    Attributes:
        retention: fraction of visual tokens kept, in (0, 1]. 1.0 is an exact no-op.
        tau: segmentation threshold on consecutive frame-mean cosine; None = the paper's rule
            (0.80 when retention >= 0.20, else 0.95).
        scout_ratio: rho, share of each frame's budget given to the scout's foveal tokens (0.85).
        knn_k: k of the kNN density in DPC-KNN (7).
        alpha: soft-aggregation blend weight a (0.5): anchor -> (1 - a) v + a mean(cluster).
        min_frame_ratio: b_min = max(1, round(min_frame_ratio * N)), capped at floor(B_total / T).
        newline: LLaVA video layout: "one" keeps the single newline token that transformers'
            LLaVA-OneVision / LLaVA-Video port appends after a video's tokens; "none" drops it.
            (The paper's "Grid" layout, a newline after every row of every frame, does not exist in
            the stock transformers port, and its per-row count would depend on which rows keep
            tokens, which the processor cannot know before the model prunes; "grid" is rejected.)
        backend: kernel backend for the pruning ops: "auto" | "triton" | "torch".
    """

    retention: float = 0.15
    tau: Optional[float] = None
    scout_ratio: float = 0.85
    knn_k: int = 7
    alpha: float = 0.5
    min_frame_ratio: float = 0.10
    newline: str = "one"
    backend: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "retention", check_retention(self.retention))
        if self.tau is not None:
            object.__setattr__(self, "tau", _check_number("tau", self.tau, -1.0, 1.0))
        object.__setattr__(self, "scout_ratio", _check_number("scout_ratio", self.scout_ratio, 0.0, 1.0))
        if isinstance(self.knn_k, bool) or not isinstance(self.knn_k, int):
            raise TypeError(f"knn_k must be an int >= 1, got {self.knn_k!r}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        object.__setattr__(self, "alpha", _check_number("alpha", self.alpha, 0.0, 1.0))
        object.__setattr__(
            self, "min_frame_ratio", _check_number("min_frame_ratio", self.min_frame_ratio, 0.0, 1.0)
        )
        if self.newline == "grid":
            raise ValueError(
                'newline="grid" is not supported: transformers\' LLaVA video layout has one newline token '
                'a video (no per-row newlines); use newline="one" (the default) to keep it or "none" to drop it'
            )
        if self.newline not in NEWLINE_MODES:
            raise ValueError(f"newline must be one of {NEWLINE_MODES}, got {self.newline!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def effective_tau(self) -> float:
        """tau, or the paper's rule: 0.80 when retention >= 0.20, else 0.95."""
        if self.tau is not None:
            return self.tau
        return 0.80 if self.retention >= 0.20 else 0.95

    def replace(self, **changes) -> "VistaConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def check_config(config) -> VistaConfig:
    """``config`` itself when a VistaConfig, the defaults when None; a TypeError otherwise."""
    if config is None:
        return VistaConfig()
    if not isinstance(config, VistaConfig):
        raise TypeError(f"config must be a vista.VistaConfig, got {type(config).__name__}")
    return config
