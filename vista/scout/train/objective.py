"""The objective of the scout recipe (paper Appendix A): losses, Key Token Projector, soft top-K.

Fine-tuning keeps the ViT frozen (``requires_grad=False``, eval mode) and trains the Q-Former side
(query tokens, text embeddings, Q-Former, ITC projections, ITM head) plus a new *Key Token
Projector* Φ::

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
"""
from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .data import _is_int, _is_num

if TYPE_CHECKING:  # the config lives with the training loop, which imports this module
    from .trainer import ScoutTrainConfig

PROJECTOR_WEIGHTS_NAME = "key_token_projector.safetensors"
PROJECTOR_CONFIG_NAME = "key_token_projector.json"


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
    from ..scout import qformer_scored_attention

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

    img_feat = _qformer_image_features(model, image_embeds)  # (B, Nq, E); before the text: dropout RNG order
    txt_feat = _qformer_text_features(model, input_ids, attention_mask)  # (B, E)
    pos = positive_pair_mask(image_ids, batch.get("texts")).to(device)
    loss_itc, logits = _itc_loss(img_feat, txt_feat, pos, config.itc_temperature)
    loss_itm, cross = _itm_loss(model, image_embeds, input_ids, attention_mask, logits, pos, generator)
    loss_align = _align_loss(projector, image_embeds, cross[:B], txt_feat, config)

    total = loss_itm + loss_itc + config.alpha * loss_align
    return {"itm": loss_itm.float(), "itc": loss_itc.float(), "align": loss_align.float(), "total": total.float()}


def _itc_loss(img_feat: torch.Tensor, txt_feat: torch.Tensor, pos: torch.Tensor,
              temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric image-text contrastive loss with soft targets over the positives ``pos`` (B, B).

    ``img_feat`` (B, N_q, E) and ``txt_feat`` (B, E) are L2-normalised. Returns ``(loss, logits)``:
    logits (B_img, B_txt) = max over queries of the cosine / t_itc.
    """
    sim = torch.einsum("iqe,je->ijq", img_feat, txt_feat).amax(dim=-1)  # (B_img, B_txt)
    logits = sim / temperature
    targets = pos.float() / pos.float().sum(dim=1, keepdim=True)
    targets_t = pos.t().float() / pos.t().float().sum(dim=1, keepdim=True)
    loss_itc = 0.5 * (
        -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        - (targets_t * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    )
    return loss_itc, logits


def _itm_loss(model, image_embeds, input_ids, attention_mask, logits: torch.Tensor, pos: torch.Tensor,
              generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image-text matching on B positive + 2B online hard-negative pairs (drawn from ``logits``).

    Returns ``(loss, cross)``: cross (3B, heads, N_q, P), the last cross-attention layer's
    probabilities, the B positive pairs first.
    """
    B = image_embeds.shape[0]
    device = model.query_tokens.device
    neg_txt, neg_img = sample_hard_negatives(logits.detach(), pos, generator)
    ar = torch.arange(B, device=device)
    img_idx = torch.cat([ar, ar, neg_img])
    txt_idx = torch.cat([ar, neg_txt, ar])
    itm_logits, cross = _qformer_itm(model, image_embeds[img_idx], input_ids[txt_idx], attention_mask[txt_idx])
    labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)]).to(device)
    return F.cross_entropy(itm_logits, labels), cross


def _align_loss(projector: KeyTokenProjector, image_embeds: torch.Tensor, cross_pos: torch.Tensor,
                txt_feat: torch.Tensor, config: ScoutTrainConfig) -> torch.Tensor:
    """Soft top-K alignment on the positive pairs: mean of 1 − cos(Φ(v_key), t_feat)."""
    S = patch_importance(cross_pos, num_prefix_tokens=0)  # (B, P), eq. 6 scale; CLS already dropped
    v_key = key_visual_feature(image_embeds[:, 1:, :], S, config.top_k, config.mask_temperature,
                               score_norm=config.mask_score_norm)
    key_feat = projector(v_key.to(next(projector.parameters()).dtype)).float()
    return (1.0 - F.cosine_similarity(key_feat, txt_feat, dim=-1)).mean()
