"""The ``frame_stats`` op on the GPU: per-frame pairwise geometry in one pass over x (Gram matrix,
squared norms, frame means), then the cosines of consecutive frame means.

``_frame_geometry_kernel`` reads the tokens of a chunk of frames once. Program (f, ti, tj) with
tj >= ti computes the (BLOCK_N x BLOCK_N) Gram tile G[f, I, J] = X_I X_J^T with ``tl.dot`` (fp32
accumulation; 16-bit inputs go to the tensor cores as they are, fp32 inputs use the configurable
``input_precision``, "ieee" by default) and stores it and its mirror G[f, J, I] (G is exactly
symmetric). The diagonal programs (ti == tj) also accumulate the squared norms of their rows and the
per-tile column sums of the valid rows (the frame mean numerators), so ``frame_cosine`` comes out of
the same pass. Distances are derived from G and the norms by the consumers
(``d2 = max(-2 G_ij + |x_i|^2 + |x_j|^2, 0) / D``, the reference's formula and order).

Frames are processed in chunks so the (chunk, N, N) fp32 Gram buffer stays under
``max_gram_elems`` elements. ``frame_stats_triton`` is the op; ``Geometry`` (the buffers) and
``video_geometry`` are shared with the DPC, aggregation and ``prune_frames`` wrappers.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..checks import check_tokens, check_valid
from ..utils import check_input_precision, check_triton_device, kernel_interpreted, next_pow2, upcast_flag

#: Default bound on the elements of one (F_chunk, N, N) fp32 Gram buffer (256 MiB, as the reference).
MAX_GRAM_ELEMS = 1 << 26
_EPS = 1e-12


@triton.jit
def _tile_pair(pid, T, COMPUTE_GRAM: tl.constexpr):
    """(ti, tj) row and column tiles of program ``pid``: with COMPUTE_GRAM the programs enumerate the
    T(T+1)/2 pairs ti <= tj row by row; without, the T diagonal tiles (ti == tj)."""
    ti = pid * 0
    rem = pid
    if COMPUTE_GRAM:
        while rem >= T - ti:
            rem -= T - ti
            ti += 1
        tj = ti + rem
    else:
        ti = pid
        tj = pid
    return ti, tj


@triton.jit
def _frame_geometry_kernel(
    x_ptr, valid_ptr, g_ptr, sq_ptr, msum_ptr, mcnt_ptr,
    f0, N, D, T, stride_xf,
    COMPUTE_GRAM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):
    # grid = (tile pairs, frames): a frame's tiles are consecutive programs (its rows stay in L2).
    fl = tl.program_id(1).to(tl.int64)  # frame within the chunk (Gram buffer index)
    f = fl + f0  # frame in the video
    ti, tj = _tile_pair(tl.program_id(0), T, COMPUTE_GRAM)
    ar = tl.arange(0, BLOCK_N)
    ad = tl.arange(0, BLOCK_D)
    rows_i = ti * BLOCK_N + ar
    rows_j = tj * BLOCK_N + ar
    mi = rows_i < N
    mj = rows_j < N
    diag = ti == tj
    x_f = x_ptr + f * stride_xf
    vi = tl.load(valid_ptr + f * N + rows_i, mask=mi, other=0) != 0
    acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    sq_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + ad
        md = dd < D
        a = tl.load(x_f + rows_i[:, None] * D + dd[None, :], mask=mi[:, None] & md[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
        if COMPUTE_GRAM:
            if INTERPRETED and diag:
                # the interpreter's dot is a BLAS call: a @ a.T (same array) is computed
                # symmetrically, a separately loaded copy is not (edge micro-kernels differ)
                b = a
            else:
                # loaded unconditionally on GPUs (diagonal tiles read their rows twice, from L1/L2)
                # so the loop is software-pipelined with async copies
                b = tl.load(x_f + rows_j[:, None] * D + dd[None, :], mask=mj[:, None] & md[None, :], other=0.0)
                if UPCAST:
                    b = b.to(tl.float32)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
        if diag:
            af = a.to(tl.float32)
            sq_acc += tl.sum(af * af, axis=1)
            ms = tl.sum(tl.where(vi[:, None], af, 0.0), axis=0)
            tl.store(msum_ptr + (f * T + ti) * D + dd, ms, mask=md)
    if COMPUTE_GRAM:
        if diag:  # exact symmetry whatever the dot's summation order: the upper triangle wins
            acc = tl.where(ar[:, None] <= ar[None, :], acc, tl.trans(acc))
        g_f = g_ptr + fl * N * N
        m2 = mi[:, None] & mj[None, :]
        tl.store(g_f + rows_i[:, None] * N + rows_j[None, :], acc, mask=m2)
        if not diag:
            tl.store(g_f + rows_j[None, :] * N + rows_i[:, None], acc, mask=m2)
    if diag:
        tl.store(sq_ptr + f * N + rows_i, sq_acc, mask=mi)
        tl.store(mcnt_ptr + f * T + ti, tl.sum(vi.to(tl.float32), axis=0))


@triton.jit
def _frame_cosine_kernel(msum_ptr, mcnt_ptr, out_ptr, T, D, EPS, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """cos(mean_f, mean_{f+1}) from the per-tile partial sums of the geometry kernel."""
    f = tl.program_id(0).to(tl.int64)
    ts = tl.arange(0, BLOCK_T)
    mt = ts < T
    ca = tl.maximum(tl.sum(tl.load(mcnt_ptr + f * T + ts, mask=mt, other=0.0), axis=0), 1.0)
    cb = tl.maximum(tl.sum(tl.load(mcnt_ptr + (f + 1) * T + ts, mask=mt, other=0.0), axis=0), 1.0)
    dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
    na = tl.zeros((BLOCK_D,), dtype=tl.float32)
    nb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        md = dd < D
        m2 = mt[:, None] & md[None, :]
        a = tl.sum(tl.load(msum_ptr + (f * T + ts[:, None]) * D + dd[None, :], mask=m2, other=0.0), axis=0)
        b = tl.sum(tl.load(msum_ptr + ((f + 1) * T + ts[:, None]) * D + dd[None, :], mask=m2, other=0.0), axis=0)
        a = tl.math.div_rn(a, ca + tl.zeros_like(a))
        b = tl.math.div_rn(b, cb + tl.zeros_like(b))
        dot += a * b
        na += a * a
        nb += b * b
    # each norm clamped at EPS (reference: cosine_of_means)
    den = tl.maximum(tl.sqrt_rn(tl.sum(na, axis=0)), EPS) * tl.maximum(tl.sqrt_rn(tl.sum(nb, axis=0)), EPS)
    tl.store(out_ptr + f, tl.math.div_rn(tl.sum(dot, axis=0), den))


def geometry_config(N: int, D: int, dtype: torch.dtype) -> dict:
    """Block sizes and num_warps the wrappers launch ``_frame_geometry_kernel`` with (AOT uses it too)."""
    block_n = 16 if N <= 16 else 32 if N <= 32 else 64
    # AOT-checked (python -m vista_kernels.aot): these spill nothing on sm_80/sm_90 (fp32 with
    # BLOCK_D=32 and fp16 with BLOCK_D=64 spill on sm_80)
    if dtype == torch.float32:
        block_d, warps = 16, 8
    elif dtype == torch.float16:
        block_d, warps = 32, 8
    else:
        block_d, warps = 64, 8
    if block_n < 64:
        warps = 4
    block_d = max(16, min(block_d, next_pow2(D)))
    return {"BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps, "num_stages": GEOMETRY_STAGES}


#: Software-pipelining depth of the geometry kernel's D loop (async copies of the next tiles).
GEOMETRY_STAGES = 3


def cosine_config(T: int, D: int) -> dict:
    # Two (BLOCK_T, BLOCK_D) fp32 tiles live in registers: keep BLOCK_T * BLOCK_D <= 4096 (AOT-checked:
    # N = 4096 -> T = 64 with BLOCK_D = 256 spilled ~100 bytes on sm_80/sm_90; BLOCK_D = 64 does not).
    block_t = max(2, next_pow2(T))
    return {"BLOCK_T": block_t, "BLOCK_D": max(16, min(256, next_pow2(D), 4096 // block_t)), "num_warps": 4}


def frames_per_chunk(F: int, N: int, max_gram_elems: Optional[int]) -> int:
    bound = MAX_GRAM_ELEMS if max_gram_elems is None else int(max_gram_elems)
    if bound < 1:
        raise ValueError(f"max_gram_elems must be >= 1, got {max_gram_elems}")
    return max(1, min(max(F, 1), bound // max(1, N * N)))


class Geometry:
    """Per-video buffers filled by the geometry kernel: squared norms (F, N), mean partials."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor, input_precision: str = "ieee"):
        self.x = x.contiguous()
        self.valid_u8 = valid.contiguous().view(torch.uint8)
        F, N, D = x.shape
        self.F, self.N, self.D = F, N, D
        self.cfg = geometry_config(N, D, x.dtype)
        self.T = triton.cdiv(N, self.cfg["BLOCK_N"])
        dev = x.device
        self.sq = torch.empty((F, N), dtype=torch.float32, device=dev)
        self.msum = torch.empty((F, self.T, D), dtype=torch.float32, device=dev)
        self.mcnt = torch.empty((F, self.T), dtype=torch.float32, device=dev)
        self.upcast = upcast_flag(_frame_geometry_kernel, x.dtype)
        self.input_precision = check_input_precision(input_precision)

    def _launch(self, f0: int, nf: int, g: Optional[torch.Tensor]) -> None:
        cfg = self.cfg
        compute_gram = g is not None
        tiles = self.T * (self.T + 1) // 2 if compute_gram else self.T
        _frame_geometry_kernel[(tiles, nf)](
            self.x, self.valid_u8, g if compute_gram else self.sq, self.sq, self.msum, self.mcnt,
            f0, self.N, self.D, self.T, self.N * self.D,
            COMPUTE_GRAM=compute_gram, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"],
            UPCAST=self.upcast, INPUT_PRECISION=self.input_precision,
            INTERPRETED=kernel_interpreted(_frame_geometry_kernel), num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )

    def means_only(self) -> None:
        """Fill the norms and mean partials without any Gram matrix (frame_cosine alone)."""
        if self.F:
            self._launch(0, self.F, None)

    def chunks(self, max_gram_elems: Optional[int] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yield (f0, f1, G) with G (f1 - f0, N, N) fp32 for consecutive frame chunks (buffer reused)."""
        F, N = self.F, self.N
        step = frames_per_chunk(F, N, max_gram_elems)
        if F == 0:
            return
        buf = torch.empty((min(step, F), N, N), dtype=torch.float32, device=self.x.device)
        for f0 in range(0, F, step):
            nf = min(step, F - f0)
            g = buf[:nf]
            self._launch(f0, nf, g)
            # Squared norms from G's own diagonal (as the reference does): bit-identical tokens are
            # then exactly 0 apart, and (sq_i + sq_j) - 2 G_ij is exactly symmetric.
            self.sq[f0 : f0 + nf] = g.diagonal(dim1=1, dim2=2)
            yield f0, f0 + nf, g

    def means(self) -> torch.Tensor:
        """(F, D) fp32 frame means over valid tokens (after a launch covered every frame)."""
        return self.msum.sum(1) / self.mcnt.sum(1, keepdim=True).clamp(min=1.0)

    def cosine(self) -> torch.Tensor:
        """(F-1,) fp32 cosine of consecutive frame means (after a launch covered every frame)."""
        F = self.F
        out = torch.empty((max(F - 1, 0),), dtype=torch.float32, device=self.x.device)
        if F >= 2:
            c = cosine_config(self.T, self.D)
            _frame_cosine_kernel[(F - 1,)](
                self.msum, self.mcnt, out, self.T, self.D, _EPS,
                BLOCK_T=c["BLOCK_T"], BLOCK_D=c["BLOCK_D"], num_warps=c["num_warps"],
            )
        return out


def video_geometry(x, valid, input_precision="ieee") -> Geometry:
    """Geometry buffers of a checked (F, N, D) ``x`` (``valid`` None: all tokens valid); no launch yet."""
    check_triton_device(x, _frame_geometry_kernel)
    if valid is None:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return Geometry(x, valid, input_precision)


def frame_stats_triton(x: torch.Tensor, valid: Optional[torch.Tensor] = None, *, keep_gram: bool = True,
                       max_gram_elems: Optional[int] = None):
    """(means (F, D) fp32, cosine (F-1,) fp32, gram (F, N, N) fp32 or an empty (0, N, N) tensor).

    The Gram tensor comes back when ``keep_gram`` and it fits ``max_gram_elems`` (default
    ``MAX_GRAM_ELEMS``); otherwise only the norms and means are computed.
    """
    F, N, D = x.shape
    geo = video_geometry(x.contiguous(), valid)
    gram = torch.empty((0, N, N), dtype=torch.float32, device=x.device)
    if keep_gram and frames_per_chunk(F, N, max_gram_elems) >= F:
        gram = next(iter(geo.chunks(max_gram_elems)))[2]  # one launch: G, norms, means
    else:
        geo.means_only()
    return geo.means(), geo.cosine(), gram


def frame_geometry_triton(x, valid=None, *, max_gram_elems: Optional[int] = None, input_precision: str = "ieee"):
    """Run the geometry kernel over every frame: returns (G (F, N, N) fp32, sq (F, N), means (F, D)).

    Materialises the whole Gram tensor; meant for tests and small inputs (the ops consume G chunk
    by chunk instead).
    """
    x = check_tokens(x)
    valid = check_valid(valid, x)
    check_triton_device(x, _frame_geometry_kernel)
    geo = Geometry(x, valid, input_precision)
    F, N, _ = x.shape
    G = torch.empty((F, N, N), dtype=torch.float32, device=x.device)
    for f0, f1, g in geo.chunks(max_gram_elems):
        G[f0:f1] = g
    if F == 0:
        return G, geo.sq, torch.zeros((0, x.shape[2]), dtype=torch.float32, device=x.device)
    return G, geo.sq, geo.means()


def _means_geometry(x, valid):
    """(x checked, its Geometry after the means-only pass: per-frame means, no Gram)."""
    x = check_tokens(x)
    valid = check_valid(valid, x)
    check_triton_device(x, _frame_geometry_kernel)
    geo = Geometry(x, valid)
    geo.means_only()
    return x, geo


def frame_means_triton(x, valid=None):
    """(F, D) fp32 mean of each frame's valid tokens (zero vector for a frame without any)."""
    x, geo = _means_geometry(x, valid)
    if x.shape[0] == 0:
        return torch.zeros((0, x.shape[2]), dtype=torch.float32, device=x.device)
    return geo.means()


def frame_cosine_triton(x, valid=None):
    """(F-1,) fp32 cos(mean x[t], mean x[t+1]) over valid tokens; same contract as the reference."""
    _, geo = _means_geometry(x, valid)
    return geo.cosine()
