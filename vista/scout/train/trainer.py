"""Fine-tuning recipe for the semantic scout (paper Appendix A): ``vista train-scout``.

The scout is a BLIP-2 image-text-matching model (``Blip2ForImageTextRetrieval``). Fine-tuning keeps
the ViT frozen (``requires_grad=False``, eval mode) and trains the Q-Former side (query tokens, text
embeddings, Q-Former, ITC projections, ITM head) plus a new *Key Token Projector* Φ::

    Φ = Linear(D_v -> H) -> LayerNorm(H) -> GELU -> Dropout -> Linear(H -> E)

(D_v = vision width, 1408 for ViT-g; E = contrastive width ``image_text_hidden_size``, 256).

Objective (Eq. 13), for a micro-batch of B region phrases and their images::

    L = L_ITM + L_ITC + α · L_Align,   α = 2.0

* **ITC** — image features are the Q-Former query outputs projected and L2-normalised,
  (B, N_q, E); the text feature is the projected, normalised [CLS] output of the text-only Q-Former,
  (B, E). sim[i, j] = max_q <img[i, q], txt[j]>; logits = sim / t_itc. Symmetric cross-entropy;
  pairs that share an image id or an identical phrase count as positives (soft targets).
* **ITM** with online hard negatives — for every image a negative phrase and for every phrase a
  negative image are drawn from ``multinomial(softmax(logits))`` over the *non-positive* entries of
  the ITC similarity row/column (never the positive). B positive + 2B negative pairs go through the
  text-conditioned Q-Former; ``itm_head`` averaged over the query outputs gives 2-way logits.
* **Soft top-K alignment** (Eqs. 14-15) — S (B, P): cross-attention probabilities of the
  (question-conditioned) queries to the P image patches in the last Q-Former cross-attention layer
  of the positive ITM pairs, taken *before* attention dropout (the scout's own probabilities, not
  transformers' post-dropout weights) and reduced as at inference (eq. 6: sum over queries of the
  max over heads; the ViT's CLS key is dropped). τ = K-th largest S_i (K = min(K, P));
  m_i = σ((S_i − τ)/T); w = m⊙S / Σ(m⊙S); v_key = Σ_i w_i·patch_i (B, D_v);
  L_Align = mean_b [1 − cos(Φ(v_key), t_feat)], t_feat the ITC text feature of the phrase.
  (``mask_score_norm="max"`` builds the mask from S / max S instead, a scale-free variant.)

Data: Visual Genome ``region_descriptions.json`` plus image folder(s) holding ``{image_id}.jpg``;
see :func:`load_region_descriptions`. Training pairs are (whole image, region phrase).

Output layout of :func:`train_scout` (``output_dir``)::

    config.json, model.safetensors, processor files     Blip2ForImageTextRetrieval + Blip2Processor
    key_token_projector.safetensors / .json             Φ (load with :func:`load_projector`)
    best/            the same, for the lowest validation loss seen
    checkpoint-N/    the same + trainer_state.pt (optimizer, scheduler, RNG, data position) to resume
    log.jsonl        one JSON line per optimizer step and per validation

The root holds the best-validation model when a validation split exists, else the final one, so
``SemanticScout.from_pretrained(output_dir)`` picks up the result.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PROJECTOR_WEIGHTS_NAME",
    "PROJECTOR_CONFIG_NAME",
    "ScoutTrainConfig",
    "RegionSample",
    "load_region_descriptions",
    "split_by_image",
    "RegionDataset",
    "RegionCollator",
    "KeyTokenProjector",
    "save_projector",
    "load_projector",
    "patch_importance",
    "soft_topk_mask",
    "key_visual_feature",
    "positive_pair_mask",
    "sample_hard_negatives",
    "freeze_vision_encoder",
    "compute_scout_losses",
    "ScoutTrainer",
    "read_trainer_state",
    "train_scout",
    "add_train_scout_parser",
    "cmd_train_scout",
]

PROJECTOR_WEIGHTS_NAME = "key_token_projector.safetensors"
PROJECTOR_CONFIG_NAME = "key_token_projector.json"
TRAINER_STATE_NAME = "trainer_state.pt"
LOG_NAME = "log.jsonl"


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class ScoutTrainConfig:
    """Hyper-parameters of the recipe. Defaults are the paper's (Sec. 4.1, Appendix A).

    ``batch_size`` is the micro-batch (hard negatives are mined inside it); one optimizer step
    consumes ``grad_accum`` micro-batches. ``max_steps`` counts optimizer steps; when ``None`` it is
    ``epochs`` passes over the training split. ``save_every``/``eval_every`` are in optimizer steps
    (0 = never; a final checkpoint and validation are always written).
    """

    lr: float = 5e-5
    batch_size: int = 16
    grad_accum: int = 20
    weight_decay: float = 0.05
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (after linear warm-up)
    max_grad_norm: float = 0.0  # 0 = no clipping
    max_steps: Optional[int] = None
    epochs: int = 1
    alpha: float = 2.0
    top_k: int = 64
    mask_temperature: float = 0.1
    mask_score_norm: str = "none"  # "none" (paper: S on eq. 6's scale) | "max": S / max(S) before the mask
    itc_temperature: float = 0.07
    projector_hidden: Optional[int] = None  # None = vision width
    projector_dropout: float = 0.1
    min_words: int = 3
    max_text_len: int = 32
    val_fraction: float = 0.01
    max_eval_batches: int = 50
    eval_every: int = 125
    save_every: int = 500
    save_total_limit: int = 2  # checkpoint-N dirs kept (0 = keep all)
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on CUDA; ignored on CPU
    num_workers: int = 0
    progress: bool = True

    def validate(self) -> "ScoutTrainConfig":
        """Raise ``ValueError``/``TypeError`` naming the first bad field; return ``self``."""

        def num(name, lo=None, hi=None, lo_open=False, integer=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int,) if integer else Real):
                raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise ValueError(f"{name} must be <= {hi}, got {v!r}")

        num("lr", 0, lo_open=True)
        num("batch_size", 2, integer=True)  # hard negatives need a second pair
        num("grad_accum", 1, integer=True)
        num("weight_decay", 0)
        num("warmup_steps", 0, integer=True)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        num("max_grad_norm", 0)
        num("max_steps", 1, integer=True, allow_none=True)
        num("epochs", 1, integer=True)
        num("alpha", 0)
        num("top_k", 1, integer=True)
        num("mask_temperature", 0, lo_open=True)
        if self.mask_score_norm not in ("none", "max"):
            raise ValueError(f"mask_score_norm must be 'none' or 'max', got {self.mask_score_norm!r}")
        num("itc_temperature", 0, lo_open=True)
        num("projector_hidden", 1, integer=True, allow_none=True)
        num("projector_dropout", 0, 1)
        if self.projector_dropout >= 1:
            raise ValueError(f"projector_dropout must be < 1, got {self.projector_dropout!r}")
        num("min_words", 0, integer=True)
        num("max_text_len", 2, integer=True)
        num("val_fraction", 0, 1)
        if self.val_fraction >= 1:
            raise ValueError(f"val_fraction must be < 1, got {self.val_fraction!r}")
        num("max_eval_batches", 1, integer=True)
        num("eval_every", 0, integer=True)
        num("save_every", 0, integer=True)
        num("save_total_limit", 0, integer=True)
        num("seed", 0, integer=True)
        num("num_workers", 0, integer=True)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Fields that may differ between a checkpoint's run and the run resuming from it: they only decide
# how long to train, what to log/evaluate/save and how to execute, never the data order or the
# optimisation. Every other field (batch_size, grad_accum, seed, lr, weight_decay, warmup_steps,
# lr_schedule, max_grad_norm, the loss terms, the projector, min_words, max_text_len, val_fraction,
# and any field added later) must match, or ``ScoutTrainer.load_checkpoint`` refuses to resume.
# ``max_steps``/``epochs`` are the exception to the exception under ``lr_schedule="cosine"``: there
# they set the length of the cosine decay, so the resulting step count must match.
RESUME_SAFE_FIELDS = frozenset({
    "max_steps", "epochs", "eval_every", "save_every", "save_total_limit", "max_eval_batches",
    "bf16", "num_workers", "progress",
})


# --------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class RegionSample:
    """One (image, region phrase) pair. ``bbox`` is VG's (x, y, width, height) in pixels."""

    image_id: int
    region_id: int
    phrase: str
    bbox: Tuple[float, float, float, float]
    image_path: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _image_index(image_dirs: Sequence[str]) -> Dict[int, str]:
    """Map image id -> path for every ``{id}.jpg`` in the folders (earlier folders win)."""
    index: Dict[int, str] = {}
    for d in image_dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"image_dir {d!r} is not a directory")
        for name in os.listdir(d):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg") and stem.isdigit():
                index.setdefault(int(stem), os.path.join(d, name))
    return index


def load_region_descriptions(
    json_path: str,
    image_dir: Union[str, Sequence[str]],
    min_words: int = 3,
    max_images: Optional[int] = None,
) -> List[RegionSample]:
    """Read Visual Genome region descriptions and pair every phrase with its image file.

    Args:
        json_path: ``region_descriptions.json`` in VG's published layout::

            [{"id": image_id, "regions": [{"region_id": int, "image_id": int, "phrase": str,
                                           "x": num, "y": num, "width": num, "height": num}, ...]},
             ...]
        image_dir: a folder, or several (VG ships ``VG_100K`` and ``VG_100K_2``), holding
            ``{image_id}.jpg``.
        min_words: phrases with fewer whitespace-separated words are dropped (paper: 3).
        max_images: keep only the first this-many images of the file (quick runs).

    Returns:
        ``RegionSample`` list in file order (images with no surviving phrase contribute nothing).

    Raises:
        ValueError: the file is not JSON or does not have the layout above (the message names the
            offending entry, e.g. ``json_path[3]["regions"][0]: missing "phrase"``).
        FileNotFoundError: a folder or an image referenced by a kept phrase is missing.
    """
    if not isinstance(json_path, (str, os.PathLike)):
        raise TypeError(f"json_path must be a path, got {type(json_path).__name__}")
    if isinstance(image_dir, (str, os.PathLike)):
        image_dirs = [os.fspath(image_dir)]
    elif isinstance(image_dir, (list, tuple)) and image_dir and all(
        isinstance(d, (str, os.PathLike)) for d in image_dir
    ):
        image_dirs = [os.fspath(d) for d in image_dir]
    else:
        raise TypeError(f"image_dir must be a folder path or a non-empty list of them, got {image_dir!r}")
    if not _is_int(min_words) or min_words < 0:
        raise ValueError(f"min_words must be an int >= 0, got {min_words!r}")
    if max_images is not None and (not _is_int(max_images) or max_images < 1):
        raise ValueError(f"max_images must be an int >= 1 or None, got {max_images!r}")

    json_path = os.fspath(json_path)
    try:
        with open(json_path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_path {json_path!r} is not valid JSON ({e})") from e

    where = "json_path"
    layout = ('expected [{"id": image_id, "regions": [{"region_id", "image_id", "phrase", '
              '"x", "y", "width", "height"}, ...]}, ...]')
    if not isinstance(data, list):
        raise ValueError(f"{where}: top level must be a list of images, got {type(data).__name__}; {layout}")
    if max_images is not None:
        data = data[:max_images]

    index = _image_index(image_dirs)
    samples: List[RegionSample] = []
    for i, entry in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: must be an object, got {type(entry).__name__}; {layout}")
        for key in ("id", "regions"):
            if key not in entry:
                raise ValueError(f'{at}: missing "{key}"; {layout}')
        image_id = entry["id"]
        if not _is_int(image_id):
            raise ValueError(f'{at}["id"]: must be an int image id, got {image_id!r}')
        regions = entry["regions"]
        if not isinstance(regions, list):
            raise ValueError(f'{at}["regions"]: must be a list, got {type(regions).__name__}')
        for j, reg in enumerate(regions):
            rat = f'{at}["regions"][{j}]'
            if not isinstance(reg, dict):
                raise ValueError(f"{rat}: must be an object, got {type(reg).__name__}; {layout}")
            for key in ("region_id", "image_id", "phrase", "x", "y", "width", "height"):
                if key not in reg:
                    raise ValueError(f'{rat}: missing "{key}"; {layout}')
            if not isinstance(reg["phrase"], str):
                raise ValueError(f'{rat}["phrase"]: must be a string, got {reg["phrase"]!r}')
            for key in ("region_id", "image_id"):
                if not _is_int(reg[key]):
                    raise ValueError(f'{rat}["{key}"]: must be an int, got {reg[key]!r}')
            for key in ("x", "y", "width", "height"):
                if not _is_num(reg[key]):
                    raise ValueError(f'{rat}["{key}"]: must be a number, got {reg[key]!r}')
            if reg["image_id"] != image_id:
                raise ValueError(f'{rat}["image_id"]: {reg["image_id"]} does not match the image id {image_id}')
            phrase = " ".join(reg["phrase"].split())
            if len(phrase.split()) < min_words:
                continue
            path = index.get(image_id)
            if path is None:
                raise FileNotFoundError(
                    f"image {image_id}.jpg (referenced by {rat}) not found in image_dir {image_dirs}"
                )
            samples.append(
                RegionSample(image_id, reg["region_id"], phrase,
                             (float(reg["x"]), float(reg["y"]), float(reg["width"]), float(reg["height"])), path)
            )
    return samples


def split_by_image(
    samples: Sequence[RegionSample], val_fraction: float, seed: int = 0
) -> Tuple[List[RegionSample], List[RegionSample]]:
    """Hold out ``val_fraction`` of the *images* (never split an image's phrases across splits).

    Returns ``(train, val)``; ``val`` is empty when ``val_fraction == 0`` or there is a single image,
    and holds at least one image otherwise.
    """
    if not _is_num(val_fraction) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    ids = sorted({s.image_id for s in samples})
    n_val = 0
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    rng = random.Random(seed)
    rng.shuffle(ids)
    val_ids = set(ids[:n_val])
    train = [s for s in samples if s.image_id not in val_ids]
    val = [s for s in samples if s.image_id in val_ids]
    return train, val


class RegionDataset(torch.utils.data.Dataset):
    """Indexable (PIL RGB image, phrase, image_id) view of a ``RegionSample`` list."""

    def __init__(self, samples: Sequence[RegionSample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        s = self.samples[i]
        with Image.open(s.image_path) as im:
            image = im.convert("RGB")
        return image, s.phrase, s.image_id


class RegionCollator:
    """Turn ``RegionDataset`` items into a batch dict for :func:`compute_scout_losses`.

    Output: ``pixel_values`` (B, 3, H, W) float, ``input_ids`` / ``attention_mask`` (B, L) long,
    ``image_ids`` (B,) long, ``texts`` list[str]. The text is tokenized with the processor's
    tokenizer alone (no ``<image>`` placeholders), truncated to ``max_text_len``.
    """

    def __init__(self, processor, max_text_len: int = 32):
        self.processor = processor
        self.max_text_len = max_text_len

    def __call__(self, items):
        images, texts, ids = zip(*items)
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        tok = self.processor.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return {
            "pixel_values": pixel_values,
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "image_ids": torch.tensor(ids, dtype=torch.long),
            "texts": list(texts),
        }


# --------------------------------------------------------------------------------------------------
# Key Token Projector


class KeyTokenProjector(nn.Module):
    """Φ: (..., in_dim) -> (..., out_dim) = Linear -> LayerNorm -> GELU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: Optional[int] = None, dropout: float = 0.1):
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not _is_num(dropout) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_dim, self.out_dim, self.hidden_dim, self.dropout_p = in_dim, out_dim, hidden_dim, float(dropout)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have last dimension {self.in_dim}, got shape {tuple(x.shape)}")
        return self.net(x)

    def config_dict(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout_p}


def save_projector(projector: KeyTokenProjector, directory: str) -> None:
    """Write ``key_token_projector.safetensors`` (weights) and ``.json`` (shape) into ``directory``."""
    from safetensors.torch import save_file

    if not isinstance(projector, KeyTokenProjector):
        raise TypeError(f"projector must be a KeyTokenProjector, got {type(projector).__name__}")
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    save_file(state, os.path.join(directory, PROJECTOR_WEIGHTS_NAME))
    with open(os.path.join(directory, PROJECTOR_CONFIG_NAME), "w", encoding="utf-8") as fh:
        json.dump(projector.config_dict(), fh, indent=2)


def load_projector(directory: str, device=None) -> KeyTokenProjector:
    """Load the projector written by :func:`save_projector` (fp32, eval mode)."""
    from safetensors.torch import load_file

    cfg_path = os.path.join(os.fspath(directory), PROJECTOR_CONFIG_NAME)
    w_path = os.path.join(os.fspath(directory), PROJECTOR_WEIGHTS_NAME)
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise FileNotFoundError(f"directory {directory!r} holds no {PROJECTOR_WEIGHTS_NAME} + {PROJECTOR_CONFIG_NAME}")
    with open(cfg_path, "r", encoding="utf-8") as fh:
        cfg = json.load(fh)
    proj = KeyTokenProjector(cfg["in_dim"], cfg["out_dim"], cfg["hidden_dim"], cfg["dropout"])
    proj.load_state_dict(load_file(w_path))
    return proj.to(device if device is not None else "cpu").eval()


# --------------------------------------------------------------------------------------------------
# loss building blocks (pure functions, testable by hand)


def patch_importance(cross_attention: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """S: cross-attention (B, heads, N_q, N_kv) -> Σ over queries of the max over heads -> (B, N_kv - prefix).

    The reduction and scale of PAPER eq. 6 (what the scout computes at inference), so the soft
    top-K mask σ((S − τ)/T) sees the same scores inference ranks by. ``num_prefix_tokens`` leading
    keys (the ViT's CLS token) are not patches and are dropped.
    """
    if not isinstance(cross_attention, torch.Tensor) or cross_attention.dim() != 4:
        raise ValueError(
            f"cross_attention must be a (B, heads, queries, keys) tensor, got "
            f"{tuple(cross_attention.shape) if isinstance(cross_attention, torch.Tensor) else type(cross_attention).__name__}"
        )
    if not _is_int(num_prefix_tokens) or not 0 <= num_prefix_tokens < cross_attention.shape[-1]:
        raise ValueError(f"num_prefix_tokens must be in [0, {cross_attention.shape[-1]}), got {num_prefix_tokens!r}")
    return cross_attention.float()[..., num_prefix_tokens:].amax(dim=1).sum(dim=1)


def soft_topk_mask(scores: torch.Tensor, k: int, temperature: float = 0.1) -> torch.Tensor:
    """Soft top-K mask (Eq. 14): m_i = sigmoid((S_i - τ) / T), τ = the K-th largest S_i of its row.

    Args:
        scores: S, (B, P) or (P,).
        k: K >= 1; K > P is allowed and means τ = the row minimum (every m_i >= 0.5).
        temperature: T > 0.
    Returns:
        m, same shape as ``scores``, in (0, 1).
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2) or scores.shape[-1] == 0:
        raise ValueError(f"scores must be a non-empty (B, P) or (P,) tensor, got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not _is_num(temperature) or not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    k_eff = min(k, scores.shape[-1])
    tau = torch.topk(scores, k_eff, dim=-1).values[..., -1:]
    return torch.sigmoid((scores - tau) / temperature)


def key_visual_feature(
    patch_embeds: torch.Tensor, scores: torch.Tensor, k: int, temperature: float = 0.1, eps: float = 1e-12,
    score_norm: str = "none",
) -> torch.Tensor:
    """v_key (B, D): patch embeddings (B, P, D) weighted by the normalised masked scores.

    w = m ⊙ S / Σ_i (m ⊙ S)_i with m = :func:`soft_topk_mask` (S, k, T); v_key = Σ_i w_i · patch_i.
    ``scores`` (B, P) must be finite and non-negative (attention probabilities are).
    ``score_norm="max"`` computes the mask from S / max_i S_i instead (a scale-free variant; with
    S on eq. 6's scale, see :func:`patch_importance`, the default already gives a real soft top-K);
    w is unchanged by the rescaling otherwise.
    """
    if not isinstance(patch_embeds, torch.Tensor) or patch_embeds.dim() != 3:
        raise ValueError("patch_embeds must be a (B, P, D) tensor")
    if not isinstance(scores, torch.Tensor) or scores.shape != patch_embeds.shape[:2]:
        raise ValueError(f"scores must have shape {tuple(patch_embeds.shape[:2])} (B, P), got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    s = scores.float()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("scores must be finite and non-negative")
    if score_norm == "max":
        m = soft_topk_mask(s / s.amax(dim=-1, keepdim=True).clamp_min(eps), k, temperature)
    elif score_norm == "none":
        m = soft_topk_mask(s, k, temperature)
    else:
        raise ValueError(f"score_norm must be 'none' or 'max', got {score_norm!r}")
    w = m * s
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(eps)
    return torch.einsum("bp,bpd->bd", w, patch_embeds.float())


def positive_pair_mask(image_ids: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
    """(B, B) bool: True where image i and phrase j form a positive (same image id or same phrase).

    The diagonal is always True. Phrases compare case- and whitespace-insensitively.
    """
    if not isinstance(image_ids, torch.Tensor) or image_ids.dim() != 1:
        raise ValueError("image_ids must be a (B,) tensor")
    mask = image_ids[:, None] == image_ids[None, :]
    if texts is not None:
        if len(texts) != image_ids.shape[0]:
            raise ValueError(f"texts must have {image_ids.shape[0]} entries, got {len(texts)}")
        norm = [" ".join(t.lower().split()) for t in texts]
        same = torch.tensor([[a == b for b in norm] for a in norm], dtype=torch.bool, device=mask.device)
        mask = mask | same
    return mask | torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)


def sample_hard_negatives(
    sim_i2t: torch.Tensor, positive_mask: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Online hard negatives (Appendix A.1).

    Args:
        sim_i2t: (B, B) image-to-text similarity logits (row i = image i, column j = phrase j).
        positive_mask: (B, B) bool, True for pairs that must never be drawn as negatives
            (the diagonal and any other positive).
        generator: CPU ``torch.Generator`` for reproducible draws.
    Returns:
        ``(neg_text_for_image, neg_image_for_text)``, each (B,) long: for image i a phrase drawn from
        softmax(sim_i2t[i]) restricted to its non-positives; for phrase j an image drawn from
        softmax(sim_i2t[:, j]) restricted likewise.
    Raises:
        ValueError: some image or phrase has no non-positive partner in the batch (e.g. one
            distinct image-text pair), or the similarities are not finite.
    """
    if not isinstance(sim_i2t, torch.Tensor) or sim_i2t.dim() != 2 or sim_i2t.shape[0] != sim_i2t.shape[1]:
        raise ValueError(f"sim_i2t must be a square (B, B) tensor, got "
                         f"{tuple(sim_i2t.shape) if isinstance(sim_i2t, torch.Tensor) else type(sim_i2t).__name__}")
    if not isinstance(positive_mask, torch.Tensor) or positive_mask.shape != sim_i2t.shape or positive_mask.dtype != torch.bool:
        raise ValueError(f"positive_mask must be a bool tensor of shape {tuple(sim_i2t.shape)}")
    sim = sim_i2t.detach().float().cpu()
    pos = positive_mask.cpu() | torch.eye(sim.shape[0], dtype=torch.bool)
    if not bool(torch.isfinite(sim).all()):
        raise ValueError("sim_i2t must be finite")
    if bool(pos.all(dim=1).any()) or bool(pos.all(dim=0).any()):
        raise ValueError(
            "hard-negative mining needs at least two distinct image-text pairs in every batch: some "
            "image or phrase has no non-positive partner (batch of one pair, or all pairs share one "
            "image/phrase)"
        )

    def draw(rows: torch.Tensor, rows_pos: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(rows.masked_fill(rows_pos, float("-inf")), dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    neg_txt = draw(sim, pos)
    neg_img = draw(sim.t(), pos.t())
    dev = sim_i2t.device
    return neg_txt.to(dev), neg_img.to(dev)


# --------------------------------------------------------------------------------------------------
# model pieces


def freeze_vision_encoder(model) -> None:
    """Vision encoder: requires_grad False and eval mode. (The Q-Former keeps its attention
    implementation: the scored probabilities are formed explicitly, see :func:`_qformer_itm`.)"""
    model.vision_model.requires_grad_(False)
    model.vision_model.eval()


def _set_train_mode(model, projector, training: bool) -> None:
    model.train(training)
    projector.train(training)
    model.vision_model.eval()  # always: frozen encoder, no dropout / batch statistics


def _qformer_image_features(model, image_embeds: torch.Tensor) -> torch.Tensor:
    """(B, 1+P, D_v) -> normalised per-query image features (B, N_q, E)."""
    B = image_embeds.shape[0]
    ones = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
    out = model.qformer(
        query_embeds=model.query_tokens.expand(B, -1, -1),
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=ones,
        return_dict=True,
    ).last_hidden_state
    proj = model.vision_projection(out.to(model.vision_projection.weight.dtype))
    return F.normalize(proj.float(), dim=-1)


def _qformer_text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) token ids -> normalised [CLS] text feature (B, E)."""
    emb = model.embeddings(input_ids=input_ids)
    out = model.qformer(query_embeds=emb, query_length=0, attention_mask=attention_mask, return_dict=True)
    cls = out.last_hidden_state[:, 0, :]
    return F.normalize(model.text_projection(cls.to(model.text_projection.weight.dtype)).float(), dim=-1)


def _last_cross_attention_layer(model) -> int:
    layers = model.qformer.encoder.layer
    idx = [i for i, layer in enumerate(layers) if getattr(layer, "has_cross_attention", False)]
    if not idx:
        raise ValueError("the model's Q-Former has no cross-attention layer")
    return idx[-1]


def _qformer_itm(model, image_embeds, input_ids, attention_mask):
    """Text-conditioned Q-Former. Returns ITM logits (B, 2) and the last cross-attention layer's
    probabilities (B, heads, N_q, P), formed before attention dropout, the ViT's CLS key dropped
    (see :func:`vista.scout.scout.qformer_scored_attention`)."""
    from .scout import qformer_scored_attention

    nq = model.query_tokens.shape[1]
    cross, out = qformer_scored_attention(model, _last_cross_attention_layer(model), image_embeds, input_ids,
                                          attention_mask, full_forward=True)
    hidden = out[:, :nq, :]
    logits = model.itm_head(hidden.to(model.itm_head.weight.dtype)).float().mean(dim=1)
    return logits, cross


def compute_scout_losses(
    model,
    projector: KeyTokenProjector,
    batch: Dict[str, torch.Tensor],
    config: ScoutTrainConfig,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """The three losses of Eq. 13 for one micro-batch.

    Args:
        model: ``Blip2ForImageTextRetrieval`` (after :func:`freeze_vision_encoder`).
        projector: Φ, vision width -> ``image_text_hidden_size``.
        batch: ``pixel_values`` (B, 3, H, W), ``input_ids``/``attention_mask`` (B, L),
            ``image_ids`` (B,), optional ``texts`` (list of B phrases, for positive detection).
        config: α, K, T, t_itc are read from it.
        generator: CPU generator for the hard-negative draws.
    Returns:
        dict of 0-d fp32 tensors ``itm``, ``itc``, ``align``, ``total`` (= itm + itc + α·align).
    """
    for key in ("pixel_values", "input_ids", "attention_mask", "image_ids"):
        if key not in batch:
            raise ValueError(f"batch is missing {key!r}")
    device = model.query_tokens.device
    pixel_values = batch["pixel_values"].to(device)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    image_ids = batch["image_ids"]
    B = pixel_values.shape[0]
    if input_ids.shape[0] != B or attention_mask.shape != input_ids.shape or image_ids.shape != (B,):
        raise ValueError("batch tensors disagree on the batch size / text shape")

    vision_dtype = next(model.vision_model.parameters()).dtype
    with torch.no_grad():  # frozen encoder
        image_embeds = model.vision_model(pixel_values=pixel_values.to(vision_dtype), return_dict=True).last_hidden_state
    image_embeds = image_embeds.detach()

    # ITC
    img_feat = _qformer_image_features(model, image_embeds)  # (B, Nq, E)
    txt_feat = _qformer_text_features(model, input_ids, attention_mask)  # (B, E)
    sim = torch.einsum("iqe,je->ijq", img_feat, txt_feat).amax(dim=-1)  # (B_img, B_txt)
    logits = sim / config.itc_temperature
    pos = positive_pair_mask(image_ids, batch.get("texts")).to(device)
    targets = pos.float() / pos.float().sum(dim=1, keepdim=True)
    targets_t = pos.t().float() / pos.t().float().sum(dim=1, keepdim=True)
    loss_itc = 0.5 * (
        -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        - (targets_t * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    )

    # ITM with online hard negatives
    neg_txt, neg_img = sample_hard_negatives(logits.detach(), pos, generator)
    ar = torch.arange(B, device=device)
    img_idx = torch.cat([ar, ar, neg_img])
    txt_idx = torch.cat([ar, neg_txt, ar])
    itm_logits, cross = _qformer_itm(model, image_embeds[img_idx], input_ids[txt_idx], attention_mask[txt_idx])
    labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)]).to(device)
    loss_itm = F.cross_entropy(itm_logits, labels)

    # soft top-K alignment on the positive pairs
    S = patch_importance(cross[:B], num_prefix_tokens=0)  # (B, P), eq. 6 scale; CLS already dropped
    v_key = key_visual_feature(image_embeds[:, 1:, :], S, config.top_k, config.mask_temperature,
                               score_norm=config.mask_score_norm)
    key_feat = projector(v_key.to(next(projector.parameters()).dtype)).float()
    loss_align = (1.0 - F.cosine_similarity(key_feat, txt_feat, dim=-1)).mean()

    total = loss_itm + loss_itc + config.alpha * loss_align
    return {"itm": loss_itm.float(), "itc": loss_itc.float(), "align": loss_align.float(), "total": total.float()}


# --------------------------------------------------------------------------------------------------
# trainer


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


class ScoutTrainer:
    """Runs the recipe: gradient accumulation, AdamW, checkpoints, exact resume, validation, best.

    Args:
        model: ``Blip2ForImageTextRetrieval`` (fp32 weights recommended; bf16 autocast on CUDA).
        processor: its ``Blip2Processor`` (saved next to every checkpoint).
        train_samples / val_samples: from :func:`load_region_descriptions` / :func:`split_by_image`.
        config: :class:`ScoutTrainConfig`.
        output_dir: where checkpoints, ``best/``, the log and the final model go.
        projector: a :class:`KeyTokenProjector`; a fresh one (seeded by ``config.seed``) when None.
        device: defaults to the model's device.
    """

    def __init__(self, model, processor, train_samples, val_samples, config: ScoutTrainConfig,
                 output_dir: str, projector: Optional[KeyTokenProjector] = None, device=None):
        self.config = config.validate()
        if not isinstance(output_dir, (str, os.PathLike)):
            raise TypeError(f"output_dir must be a path, got {type(output_dir).__name__}")
        self.output_dir = os.fspath(output_dir)
        self.device = torch.device(device) if device is not None else model.query_tokens.device
        self.model = model.to(self.device)
        self.processor = processor
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples or [])
        if len(self.train_samples) < config.batch_size:
            raise ValueError(
                f"train_samples has {len(self.train_samples)} pairs, fewer than batch_size={config.batch_size}"
            )
        freeze_vision_encoder(self.model)
        if projector is None:
            g_state = torch.get_rng_state()
            torch.manual_seed(config.seed)
            projector = KeyTokenProjector(
                model.config.vision_config.hidden_size, model.config.image_text_hidden_size,
                config.projector_hidden, config.projector_dropout,
            )
            torch.set_rng_state(g_state)
        if not isinstance(projector, KeyTokenProjector):
            raise TypeError(f"projector must be a KeyTokenProjector, got {type(projector).__name__}")
        self.projector = projector.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(self.projector.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.batches_per_epoch = len(self.train_samples) // config.batch_size
        if config.max_steps is not None:
            self.max_steps = config.max_steps
        else:
            self.max_steps = max(1, (config.epochs * self.batches_per_epoch) // config.grad_accum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.collate = RegionCollator(processor, config.max_text_len)
        self.neg_generator = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val: Optional[float] = None
        self.best_step: Optional[int] = None
        self.history: List[dict] = []

    # -- schedule / data -------------------------------------------------------------------------

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.lr_schedule == "cosine":
            span = max(1, self.max_steps - c.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - c.warmup_steps) / span)))
        return 1.0

    def _epoch_order(self, epoch: int) -> List[int]:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_samples), generator=g).tolist()

    def _micro_batches(self) -> Iterator[dict]:
        """Endless stream of training micro-batches from the saved (epoch, batch) position."""
        bs = self.config.batch_size
        ds = RegionDataset(self.train_samples)
        while True:
            order = self._epoch_order(self.epoch)
            start = self.batch_in_epoch
            idx = order[start * bs: self.batches_per_epoch * bs]
            batch_sampler = [idx[i:i + bs] for i in range(0, len(idx), bs)]
            # own generator: creating the loader must not draw from the global RNG (exact resume)
            loader = torch.utils.data.DataLoader(
                ds, batch_sampler=batch_sampler, collate_fn=self.collate, num_workers=self.config.num_workers,
                generator=torch.Generator().manual_seed(self.config.seed + 3 + self.epoch),
            )
            for b in loader:
                self.batch_in_epoch += 1
                yield b
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- one optimizer step ----------------------------------------------------------------------

    def train_step(self, micro_batches: Sequence[dict]) -> Dict[str, float]:
        """Forward/backward every micro-batch (loss / len), then one AdamW step. Returns the mean
        of each loss term over the micro-batches (Python floats)."""
        if not micro_batches:
            raise ValueError("micro_batches must not be empty")
        _set_train_mode(self.model, self.projector, True)
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"itm": 0.0, "itc": 0.0, "align": 0.0, "total": 0.0}
        n = len(micro_batches)
        for b in micro_batches:
            with _autocast(self.device, self.config.bf16):
                losses = compute_scout_losses(self.model, self.projector, b, self.config, self.neg_generator)
            if not bool(torch.isfinite(losses["total"])):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {losses}")
            (losses["total"] / n).backward()
            for k in sums:
                sums[k] += float(losses[k].detach()) / n
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return sums

    @torch.no_grad()
    def evaluate(self) -> Optional[Dict[str, float]]:
        """Mean losses over up to ``max_eval_batches`` validation batches (eval mode, fixed
        hard-negative seed, no effect on the training RNG). None without a validation split."""
        c = self.config
        if len(self.val_samples) < 2:
            return None
        _set_train_mode(self.model, self.projector, False)
        ds = RegionDataset(self.val_samples)
        bs = c.batch_size
        batches = [list(range(i, min(i + bs, len(ds)))) for i in range(0, len(ds), bs)]
        batches = [b for b in batches if len(b) >= 2][: c.max_eval_batches]
        gen = torch.Generator().manual_seed(c.seed + 2)
        sums = {"itm": 0.0, "itc": 0.0, "align": 0.0, "total": 0.0}
        n = 0
        for idx in batches:
            batch = self.collate([ds[i] for i in idx])
            try:
                with _autocast(self.device, c.bf16):
                    losses = compute_scout_losses(self.model, self.projector, batch, c, gen)
            except ValueError as e:
                if "hard-negative" in str(e):  # a validation batch from a single image: skip it
                    continue
                raise
            for k in sums:
                sums[k] += float(losses[k])
            n += 1
        _set_train_mode(self.model, self.projector, True)
        if n == 0:
            return None
        return {k: v / n for k, v in sums.items()}

    # -- saving / resuming -----------------------------------------------------------------------

    def save_model(self, directory: str) -> None:
        """Model + processor (``save_pretrained``) and the projector file into ``directory`` (in place;
        :meth:`save_checkpoint` and the best/final exports wrap it in a temporary folder)."""
        os.makedirs(directory, exist_ok=True)
        self.model.save_pretrained(directory)
        if self.processor is not None:
            self.processor.save_pretrained(directory)
        save_projector(self.projector, directory)

    def trainer_state(self) -> dict:
        """What :meth:`save_checkpoint` writes to ``trainer_state.pt``: only tensors, numbers, strings,
        None and lists/tuples/dicts of them, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "neg_generator": self.neg_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),  # (int, tuple of 625 ints, float | None)
            "best_val": self.best_val,
            "best_step": self.best_step,
            "config": self.config.to_dict(),
            "num_train_samples": len(self.train_samples),
            "train_fingerprint": _samples_fingerprint(self.train_samples),
            "max_steps": self.max_steps,
        }

    def save_checkpoint(self, directory: Optional[str] = None) -> str:
        """A resumable checkpoint (model, projector, optimizer, scheduler, RNG, data position).

        Everything is written to a temporary sibling folder (``.tmp-checkpoint-N-<pid>``), flushed
        to disk (fsync), and only then renamed to ``checkpoint-N``: a run killed while saving leaves
        the previous checkpoints intact and no half-written ``checkpoint-N``."""
        directory = directory or os.path.join(self.output_dir, f"checkpoint-{self.step}")
        state = self.trainer_state()

        def write(tmp):
            self.save_model(tmp)
            torch.save(state, os.path.join(tmp, TRAINER_STATE_NAME))

        _write_dir_atomically(directory, write)
        self._rotate_checkpoints()
        return directory

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        ckpts = sorted(
            (int(n.split("-", 1)[1]), n) for n in os.listdir(self.output_dir)
            if n.startswith("checkpoint-") and n.split("-", 1)[1].isdigit()
        )
        for _, name in ckpts[:-limit]:
            _remove_dir(os.path.join(self.output_dir, name))

    def load_checkpoint(self, directory: str, state: Optional[dict] = None) -> None:
        """Restore projector, optimizer, scheduler, RNG and data position from ``directory``.
        The model weights must already come from the same directory (see :func:`train_scout`).

        ``trainer_state.pt`` is read with :func:`read_trainer_state` (``weights_only=True``: a file
        holding anything but tensors and plain values is refused, nothing in it runs); ``state``
        may pass one already read from ``directory``.

        Raises:
            FileNotFoundError: no ``trainer_state.pt`` in ``directory``.
            ValueError: the file is empty, truncated, corrupt, not a vista trainer state, or the
                checkpoint's settings / training pairs differ from this run's.
        """
        path = os.path.join(os.fspath(directory), TRAINER_STATE_NAME)
        if state is None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"resume_from {directory!r} holds no {TRAINER_STATE_NAME}")
            state = read_trainer_state(path)
        self._check_resume_compatible(state, directory)
        proj = load_projector(directory, device=self.device)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.neg_generator.set_state(state["neg_generator"])
            torch_rng = state["torch_rng"]
            torch.set_rng_state(torch_rng)
            if state["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            py = state["python_rng"]
            random.setstate((py[0], tuple(py[1]), py[2]))
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise ValueError(f"{path!r} does not hold a usable trainer state ({type(e).__name__}: {e})") from None
        self.projector.load_state_dict(proj.state_dict())
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_val, self.best_step = state["best_val"], state["best_step"]

    def _check_resume_compatible(self, state: dict, directory) -> None:
        """Raise ``ValueError`` when this run's config or training data differ from the checkpoint's
        in anything that decides the data order or the optimisation (see ``RESUME_SAFE_FIELDS``).
        The data position is stored in micro-batches of the old ``batch_size`` and the shuffle order
        comes from the old ``seed``; the optimizer state carries the old ``lr``/``weight_decay``."""
        saved = state.get("config") or {}
        new = self.config.to_dict()
        diffs = []
        for name, new_v in new.items():
            if name in RESUME_SAFE_FIELDS or name not in saved:  # not in saved: an older checkpoint
                continue
            old_v = saved[name]
            if old_v != new_v:
                diffs.append(f"{name}: {old_v!r} -> {new_v!r}")
        if self.config.lr_schedule == "cosine" and saved.get("lr_schedule", "cosine") == "cosine":
            old_total = state.get("max_steps")
            if old_total is None and saved.get("max_steps", None) is not None:
                old_total = saved["max_steps"]
            elif old_total is None and "epochs" in saved and "batch_size" in saved and "grad_accum" in saved:
                bpe = state["num_train_samples"] // saved["batch_size"]
                old_total = max(1, (saved["epochs"] * bpe) // saved["grad_accum"])
            if old_total is not None and old_total != self.max_steps:
                diffs.append(f"max_steps (length of the cosine lr schedule; from max_steps/epochs): "
                             f"{old_total!r} -> {self.max_steps!r}")
        if diffs:
            raise ValueError(
                f"resume_from {directory!r} was trained with different settings, which would change the "
                f"data order or the optimisation of the resumed run: {'; '.join(diffs)}. "
                f"Resume with the checkpoint's settings, or start a new run in a new --output "
                f"(without --resume)."
            )
        if state["num_train_samples"] != len(self.train_samples):
            raise ValueError(
                f"resume_from {directory!r} was trained on {state['num_train_samples']} pairs, "
                f"this run has {len(self.train_samples)}: the data or its filtering changed"
            )
        fp = state.get("train_fingerprint")
        if fp is not None and fp != _samples_fingerprint(self.train_samples):
            raise ValueError(
                f"resume_from {directory!r} was trained on different training pairs (same count, other "
                f"images/phrases or order): the region data, --max-images or the split changed"
            )

    def _log(self, record: dict) -> None:
        self.history.append(record)
        with open(os.path.join(self.output_dir, LOG_NAME), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _validate_and_keep_best(self) -> Optional[Dict[str, float]]:
        val = self.evaluate()
        if val is None:
            return None
        self._log({"step": self.step, "split": "val", **val})
        if self.best_val is None or val["total"] < self.best_val:
            self.best_val, self.best_step = val["total"], self.step
            best_dir = os.path.join(self.output_dir, "best")

            def write(tmp):
                self.save_model(tmp)
                with open(os.path.join(tmp, "best.json"), "w", encoding="utf-8") as fh:
                    json.dump({"step": self.step, "val": val}, fh, indent=2)

            _write_dir_atomically(best_dir, write)
        return val

    # -- main loop -------------------------------------------------------------------------------

    def train(self) -> List[dict]:
        """Run until ``max_steps`` optimizer steps; returns the list of logged records."""
        c = self.config
        os.makedirs(self.output_dir, exist_ok=True)
        bar = None
        if c.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=self.step, desc="train-scout", dynamic_ncols=True)
        _remove_stale_temporaries(self.output_dir)
        _truncate_log(os.path.join(self.output_dir, LOG_NAME), self.step)
        stream = self._micro_batches()
        try:
            while self.step < self.max_steps:
                micro = [next(stream) for _ in range(c.grad_accum)]
                losses = self.train_step(micro)
                self._log({"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0], **losses})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(itm=f"{losses['itm']:.3f}", itc=f"{losses['itc']:.3f}",
                                    align=f"{losses['align']:.3f}", total=f"{losses['total']:.3f}")
                last = self.step >= self.max_steps
                if (c.eval_every and self.step % c.eval_every == 0) or last:
                    val = self._validate_and_keep_best()
                    if bar is not None and val is not None:
                        bar.write(f"step {self.step}: val total {val['total']:.4f} (itm {val['itm']:.4f}, "
                                  f"itc {val['itc']:.4f}, align {val['align']:.4f})")
                if (c.save_every and self.step % c.save_every == 0) or last:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self._export_result()
        return self.history

    def _export_result(self) -> None:
        """Root of ``output_dir`` := best-validation model if there is one, else the final one.

        The files are written to a temporary folder first and then moved into the root one by one
        (``os.replace``), so a kill never leaves a half-written file there."""
        best_dir = os.path.join(self.output_dir, "best")
        tmp = _temporary_sibling(os.path.join(self.output_dir, "result"))
        try:
            if self.best_step is not None and os.path.isdir(best_dir):
                os.makedirs(tmp)
                for name in os.listdir(best_dir):
                    src = os.path.join(best_dir, name)
                    if os.path.isfile(src):
                        shutil.copy2(src, os.path.join(tmp, name))
            else:
                self.save_model(tmp)
            _fsync_tree(tmp)
            for name in sorted(os.listdir(tmp)):
                src = os.path.join(tmp, name)
                if os.path.isfile(src):
                    os.replace(src, os.path.join(self.output_dir, name))
            _fsync_dir(self.output_dir)
        finally:
            _remove_dir(tmp)


def _samples_fingerprint(samples: Sequence[RegionSample]) -> str:
    """SHA-256 over the (image id, region id, phrase, bbox) of ``samples`` in order; image paths
    are left out, so moving the image folder keeps a checkpoint resumable."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.image_id, s.region_id, s.phrase, [float(v) for v in s.bbox]]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# crash-safe files: checkpoints in temporary folders renamed into place, a safe trainer-state reader

_TMP_PREFIX = ".tmp-"  # a folder being written: never a checkpoint, removed by the next run
_OLD_PREFIX = ".old-"  # a folder being replaced or deleted


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file under ``root`` and the folders themselves to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _temporary_sibling(path: str, prefix: str = _TMP_PREFIX) -> str:
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f"{prefix}{base}-{os.getpid()}")


def _remove_dir(path: str) -> None:
    """Delete a folder: first renamed out of the way (one atomic step), then removed."""
    if not os.path.isdir(path):
        return
    trash = _temporary_sibling(path, _OLD_PREFIX)
    try:
        if os.path.exists(trash):
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _write_dir_atomically(final: str, write) -> None:
    """Call ``write(tmp)`` on an empty temporary sibling folder of ``final``, fsync it, then rename
    it to ``final`` (a previous ``final`` is moved aside first and deleted afterwards)."""
    final = os.path.abspath(os.fspath(final))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = _temporary_sibling(final)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        write(tmp)
        _fsync_tree(tmp)
        old = None
        if os.path.exists(final):
            old = _temporary_sibling(final, _OLD_PREFIX)
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_TEMPORARY_NAME = re.compile(r"^\.(tmp|old)-(checkpoint-\d+|best|result)-\d+$")


def _remove_stale_temporaries(output_dir: str) -> None:
    """Delete the temporary folders a killed run left in ``output_dir`` (only names this module
    makes: ``.tmp-``/``.old-`` + ``checkpoint-N``/``best``/``result`` + ``-<pid>``)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if _TEMPORARY_NAME.match(name) and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _truncate_log(path: str, step: int) -> None:
    """Keep the records of ``log.jsonl`` with ``step <= step`` (the ones a resumed run does not
    write again), drop the rest and any torn line; rewritten atomically."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    keep, changed = [], False
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            ok = isinstance(rec, dict) and _is_int(rec.get("step")) and rec["step"] <= step
        except (UnicodeDecodeError, ValueError):
            ok = False
        if ok:
            keep.append(line)
        else:
            changed = True
    if not changed and (not lines or lines[-1] == b""):
        return
    tmp = path + f".tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(b"".join(x + b"\n" for x in keep))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


_STATE_TYPES = {
    "step": int, "epoch": int, "batch_in_epoch": int, "optimizer": dict, "scheduler": dict,
    "neg_generator": torch.Tensor, "torch_rng": torch.Tensor, "python_rng": (tuple, list),
    "config": dict, "num_train_samples": int,
}


def read_trainer_state(path) -> dict:
    """Read a ``trainer_state.pt`` written by :meth:`ScoutTrainer.save_checkpoint`, safely.

    The file is loaded with ``torch.load(weights_only=True)``: only tensors, numbers, strings,
    None and containers of them are accepted, so a planted pickle cannot run code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated or corrupt, holds other objects (refused, not
            run), or lacks the fields of a trainer state; the message names the file.
    """
    import pickle

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    hint = "delete that checkpoint folder or resume from an earlier one"
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is empty (0 bytes): the checkpoint was not written completely; {hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on a pickle protocol it does not default to
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln.strip() for ln in first if "Unsupported" in ln or "global" in ln.lower()), first[0] if first else "")
        raise ValueError(
            f"{path!r} is not a trainer state written by vista train-scout: it holds objects other than "
            f"tensors and plain values and was refused without running anything ({why}); {hint}"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, AttributeError, ImportError, IndexError, KeyError) as e:
        msg = str(e).strip().splitlines()
        raise ValueError(f"{path!r} is truncated or corrupt ({type(e).__name__}: {msg[0] if msg else ''}); "
                         f"{hint}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} is not a trainer state written by vista train-scout (a "
                         f"{type(state).__name__}, not a dict); {hint}")
    for key, typ in _STATE_TYPES.items():
        if key not in state:
            raise ValueError(f"{path!r} is not a complete trainer state: missing {key!r}; {hint}")
        if not isinstance(state[key], typ) or (typ is int and isinstance(state[key], bool)):
            raise ValueError(f"{path!r}: {key!r} has the wrong type ({type(state[key]).__name__}); {hint}")
    for key in ("cuda_rng", "best_val", "best_step"):
        state.setdefault(key, None)
    return state


def _checkpoint_problem(directory: str) -> Tuple[Optional[str], Optional[dict]]:
    """(None, trainer state) for a complete checkpoint folder, else (what is wrong, None)."""
    need = ["config.json", "model.safetensors", PROJECTOR_WEIGHTS_NAME, PROJECTOR_CONFIG_NAME, TRAINER_STATE_NAME]
    for name in need:
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            return f"{name} is missing", None
        if os.path.getsize(p) == 0:
            return f"{name} is empty (0 bytes)", None
    for name in ("config.json", PROJECTOR_CONFIG_NAME):
        try:
            with open(os.path.join(directory, name), "r", encoding="utf-8") as fh:
                if not isinstance(json.load(fh), dict):
                    return f"{name} does not hold a JSON object", None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return f"{name} is not readable JSON ({e})", None
    try:
        from safetensors import safe_open

        for name in ("model.safetensors", PROJECTOR_WEIGHTS_NAME):
            p = os.path.join(directory, name)
            with safe_open(p, framework="pt") as f:
                for k in f.keys():
                    f.get_slice(k)
    except Exception as e:  # noqa: BLE001 - any reader error means a damaged file
        return f"{name} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", None
    path = os.path.join(directory, TRAINER_STATE_NAME)
    try:
        state = read_trainer_state(path)
    except ValueError as e:
        msg = str(e)
        if msg.startswith(repr(path)):
            msg = TRAINER_STATE_NAME + msg[len(repr(path)):]
        return msg.split("; delete that checkpoint")[0], None
    return None, state


def _checkpoint_dirs(output_dir: str) -> List[str]:
    """``checkpoint-N`` folders of ``output_dir``, newest (largest N) first."""
    if not os.path.isdir(output_dir):
        return []
    steps = sorted((int(n.split("-", 1)[1]) for n in os.listdir(output_dir)
                    if n.startswith("checkpoint-") and n.split("-", 1)[1].isdigit()
                    and os.path.isdir(os.path.join(output_dir, n))), reverse=True)
    return [os.path.join(output_dir, f"checkpoint-{s}") for s in steps]


def _note(message: str) -> None:
    import sys

    sys.stderr.write(f"vista train-scout: note: {message}\n")
    sys.stderr.flush()


def _latest_checkpoint(output_dir: str) -> Tuple[Optional[str], Optional[dict]]:
    """The newest complete checkpoint of ``output_dir`` and its trainer state ((None, None) when
    there is none); incomplete or damaged ones are skipped with a note on stderr."""
    for d in _checkpoint_dirs(output_dir):
        problem, state = _checkpoint_problem(d)
        if problem is None:
            return d, state
        _note(f"skipping {d}: incomplete or damaged ({problem}); trying the previous checkpoint")
    return None, None


def train_scout(
    model_path: str,
    regions_json: str,
    image_dir: Union[str, Sequence[str]],
    output_dir: str,
    config: Optional[ScoutTrainConfig] = None,
    resume_from: Optional[str] = None,
    device=None,
    max_images: Optional[int] = None,
) -> List[dict]:
    """Fine-tune a scout end to end (what ``vista train-scout`` runs).

    Args:
        model_path: a ``Blip2ForImageTextRetrieval`` + ``Blip2Processor`` folder or hub id
            (e.g. ``Salesforce/blip2-itm-vit-g``), or a scout saved by ``SemanticScout``.
        regions_json, image_dir: Visual Genome data (see :func:`load_region_descriptions`).
        output_dir: results (layout in the module docstring).
        config: hyper-parameters; paper defaults when None.
        resume_from: a ``checkpoint-N`` folder, or ``"auto"`` for the newest one in ``output_dir``
            (a fresh start when there is none). The config must match the checkpoint's except for
            ``RESUME_SAFE_FIELDS`` (max_steps, epochs, eval/save settings, ...); a ``ValueError``
            names every other changed field.
        device: "cuda" when available, else "cpu", by default.
        max_images: read only the first this-many images of ``regions_json``.
    Returns:
        the log records (one per optimizer step and per validation).
    """
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    config = (config or ScoutTrainConfig()).validate()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    state = None
    if resume_from == "auto":
        resume_from, state = _latest_checkpoint(os.fspath(output_dir))
        if resume_from is None:
            if _checkpoint_dirs(os.fspath(output_dir)):
                _note(f"no complete checkpoint in {os.fspath(output_dir)!r}: starting from {model_path!r}")
        else:
            _note(f"resuming from {resume_from}")
    elif resume_from is not None:
        if not os.path.isfile(os.path.join(resume_from, TRAINER_STATE_NAME)):
            raise FileNotFoundError(f"resume_from {resume_from!r} is not a checkpoint (no {TRAINER_STATE_NAME})")
        state = read_trainer_state(os.path.join(resume_from, TRAINER_STATE_NAME))

    samples = load_region_descriptions(regions_json, image_dir, min_words=config.min_words, max_images=max_images)
    if not samples:
        raise ValueError(f"regions_json {regions_json!r} has no phrase with >= {config.min_words} words")
    train, val = split_by_image(samples, config.val_fraction, seed=config.seed)

    src = resume_from or model_path
    torch.manual_seed(config.seed)
    model = Blip2ForImageTextRetrieval.from_pretrained(src, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(src)
    trainer = ScoutTrainer(model, processor, train, val, config, output_dir, device=device)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from, state=state)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    return trainer.train()


# --------------------------------------------------------------------------------------------------
# command line


def add_train_scout_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-scout`` on an ``argparse`` sub-parser collection; returns the parser."""
    d = ScoutTrainConfig()
    p = subparsers.add_parser(
        "train-scout",
        help="fine-tune the BLIP-2 semantic scout on Visual Genome region descriptions (paper App. A)",
        description="Fine-tune the semantic scout: L = ITM + ITC + alpha*Align with a frozen ViT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every option's help shows its default
    )
    h = argparse.SUPPRESS  # no "(default: ...)" for required options
    p.add_argument("--model", default="Salesforce/blip2-itm-vit-g", metavar="PATH|HUB_ID",
                   help="Blip2ForImageTextRetrieval folder, or a hub id already in the local Hugging Face "
                        "cache (nothing is downloaded)")
    p.add_argument("--regions", required=True, default=h, metavar="JSON",
                   help="Visual Genome region_descriptions.json")
    p.add_argument("--images", required=True, action="append", default=h, metavar="DIR",
                   help="folder of {image_id}.jpg; repeat for VG_100K and VG_100K_2")
    p.add_argument("--output", required=True, default=h, metavar="DIR",
                   help="output folder (checkpoints, log.jsonl, best/, the final scout)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT|auto",
                   help="resume from a checkpoint-N folder, or 'auto' for the newest in --output")
    p.add_argument("--device", default=None, help="torch device (None: cuda when available, else cpu)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="use only the first N images (quick runs; None: all)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help="micro-batch of image-phrase pairs (hard negatives are mined inside it)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="N",
                   help="micro-batches per optimizer step")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, metavar="N",
                   help="linear learning-rate warm-up, in optimizer steps")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule,
                   help="learning-rate schedule after the warm-up")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="gradient-norm clipping (0: no clipping)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="optimizer steps (None: --epochs passes over the training split)")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="N",
                   help="passes over the training split when --max-steps is not given")
    p.add_argument("--alpha", type=float, default=d.alpha, help="weight of the alignment loss")
    p.add_argument("--top-k", type=int, default=d.top_k, metavar="K",
                   help="K of the soft top-K patch mask of the alignment loss")
    p.add_argument("--mask-temperature", type=float, default=d.mask_temperature, metavar="T",
                   help="temperature T of the soft top-K mask sigmoid((S - tau) / T)")
    p.add_argument("--mask-score-norm", choices=("none", "max"), default=d.mask_score_norm,
                   help="'max': rescale S to max 1 before the soft top-K mask ('none': the paper's mask "
                        "on eq. 6 scores)")
    p.add_argument("--itc-temperature", type=float, default=d.itc_temperature,
                   help="temperature of the image-text contrastive loss")
    p.add_argument("--projector-hidden", type=int, default=None, metavar="N",
                   help="hidden width of the Key Token Projector (None: the vision width)")
    p.add_argument("--projector-dropout", type=float, default=d.projector_dropout,
                   help="dropout inside the Key Token Projector")
    p.add_argument("--min-words", type=int, default=d.min_words, metavar="N",
                   help="drop region phrases with fewer words")
    p.add_argument("--max-text-len", type=int, default=d.max_text_len, metavar="N",
                   help="phrase length limit in tokens")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the images held out for validation")
    p.add_argument("--max-eval-batches", type=int, default=d.max_eval_batches, metavar="N",
                   help="validation micro-batches per evaluation")
    p.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                   help="validate every N optimizer steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=d.save_every, metavar="N",
                   help="write a resumable checkpoint-N/ every N optimizer steps (0: only at the end)")
    p.add_argument("--save-total-limit", type=int, default=d.save_total_limit, metavar="N",
                   help="checkpoint-N folders kept (0: keep all)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, shuffling and initialisation")
    p.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N",
                   help="data-loader worker processes")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="disable bf16 autocast on CUDA (the default shown is the bf16 setting)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (the default shown is the progress-bar setting)")
    p.set_defaults(func=cmd_train_scout)
    return p


def _config_from_args(args) -> ScoutTrainConfig:
    fields = {f.name for f in dataclasses.fields(ScoutTrainConfig)}
    return ScoutTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def check_model_source(model: str) -> str:
    """``--model`` must be a complete local BLIP-2 folder, or a hub id whose files are already in the
    local Hugging Face cache: nothing is downloaded, and an unreachable hub fails now, on one line,
    instead of after transformers' connection retries. Raises ValueError naming ``--model``."""
    from .scout import _REPO_ID, ScoutCheckpointError, check_checkpoint_dir

    m = os.fspath(model)
    if os.path.exists(m) or not _REPO_ID.match(m) or m.startswith("."):
        try:
            return check_checkpoint_dir(m)
        except ScoutCheckpointError as e:
            raise ValueError(f"--model {m}: {e}") from None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(m, "config.json")
    except Exception:  # noqa: BLE001 - an odd cache layout counts as "not cached"
        cached = None
    if not isinstance(cached, str):
        raise ValueError(
            f"--model {m}: no such local folder, and the hub id is not in the local Hugging Face cache "
            f"(vista downloads nothing); download it once, e.g. `huggingface-cli download {m} --local-dir DIR`, "
            f"then pass --model DIR")
    return m


def cmd_train_scout(args) -> int:
    """``vista train-scout`` handler. Prints a one-line summary; returns the exit code."""
    fresh = args.resume is None or (args.resume == "auto" and _latest_checkpoint(os.fspath(args.output)) is None)
    if fresh:  # a resumed run loads the model from its checkpoint folder
        check_model_source(args.model)
    config = _config_from_args(args)
    history = train_scout(args.model, args.regions, args.images, args.output, config,
                          resume_from=args.resume, device=args.device, max_images=args.max_images)
    train = [r for r in history if r["split"] == "train"]
    vals = [r for r in history if r["split"] == "val"]
    if train:
        print(f"trained to step {train[-1]['step']}: total {train[-1]['total']:.4f} (itm {train[-1]['itm']:.4f}, "
              f"itc {train[-1]['itc']:.4f}, align {train[-1]['align']:.4f})")
    if vals:
        best = min(vals, key=lambda r: r["total"])
        print(f"best validation total {best['total']:.4f} at step {best['step']}")
    print(f"scout saved to {args.output}")
    return 0
