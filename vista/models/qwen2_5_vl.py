"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``, transformers 5.x).

Video path of the stock model: frames are patchified in temporal pairs (temporal patch 2), the
vision tower merges 2x2 patches, so video k yields ``t * h * w`` tokens with ``video_grid_thw[k] =
(t, 2h, 2w)``; one token covers a temporal pair of frames. Tokens are in (t, h, w) raster order and
get 3-D M-RoPE position ids (t, h, w) from ``get_rope_index``.

With Vista (retention < 1): video k is pruned to ``retained_count(t, h*w, retention)`` tokens; the
patched processor emits that many ``<|video_pad|>`` placeholders. ``get_rope_index`` is wrapped: it
expands every pruned video back to its full grid, calls the stock ``get_rope_index`` on the
expanded sequence and keeps the ids of the kept tokens, so

* kept video tokens carry their original (t, h, w) position ids,
* text after a video continues from the position the unpruned model gives it,
* ``rope_deltas`` = unpruned max position + 1 - pruned length, so decoding continues where the
  unpruned model would.

``generate()`` computes position ids before the prefill (before the kept tokens are known); the
forward wrapper recomputes the vision rows of ``position_ids`` once the pruning has run.
"""
from __future__ import annotations

import functools
from typing import List

import torch

from ..budget import retained_count
from .common import AdapterBase, PatchedMethod, VideoItem, _InstanceHook, get_state, patch_attr

FAMILY = "qwen2_5_vl"
MODEL_TYPES = ("qwen2_5_vl",)


def unpatchify_video(pixels: torch.Tensor, grid_thw, patch_size: int, merge_size: int, temporal_patch_size: int):
    """Inverse of the Qwen2-VL video processor's patchify for one video.

    Args:
        pixels: (t*H*W, 3*tp*p*p) normalised patches of one video (H, W in patches).
        grid_thw: (t, H, W).
    Returns:
        (t*tp, 3, H*p, W*p) normalised frames (the processor's padding frame included).
    """
    t, H, W = (int(v) for v in grid_thw)
    p, m, tp = patch_size, merge_size, temporal_patch_size
    C = pixels.shape[-1] // (tp * p * p)
    x = pixels.reshape(t, H // m, W // m, m, m, C, tp, p, p)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)  # (t, tp, C, H/m, m, p, W/m, m, p)
    return x.reshape(t * tp, C, H * p, W * p)


class Qwen2_5_VLAdapter(AdapterBase):
    family = FAMILY
    model_types = MODEL_TYPES
    model_class = "Qwen2_5_VLForConditionalGeneration"
    inner_attrs = ("get_rope_index",)
    temporal_pairs = True

    # matches, inner, video_token_id and norm_stats: AdapterBase
    @staticmethod
    def placeholder_ids(config) -> List[int]:
        return [int(config.video_token_id), int(config.image_token_id), int(config.vision_start_token_id),
                int(config.vision_end_token_id)]

    @staticmethod
    def merge(config) -> int:
        return int(config.vision_config.spatial_merge_size)

    # --- counts -------------------------------------------------------------------------------
    @staticmethod
    def placeholder_count(item: VideoItem, config) -> int:
        T, h, w = item.grid
        if config.retention >= 1.0:
            return T * h * w
        return retained_count(T, h * w, config.retention)

    @staticmethod
    def full_count(item: VideoItem) -> int:
        T, h, w = item.grid
        return T * h * w

    # --- video features -----------------------------------------------------------------------
    @staticmethod
    def video_kwargs(args: dict) -> dict:
        return {"pixel_values_videos": args.get("pixel_values_videos"), "video_grid_thw": args.get("video_grid_thw")}

    def grids(self, inner, args: dict):
        m = self.merge(inner.config)
        thw = args.get("video_grid_thw")
        if thw is None:
            raise ValueError("video_grid_thw is required with pixel_values_videos")
        return [(int(t), int(h) // m, int(w) // m) for t, h, w in thw.tolist()]

    def split(self, inner, video_out, args: dict) -> List[VideoItem]:
        po = video_out.pooler_output
        if isinstance(po, torch.Tensor):
            po = (po,)
        grids = self.grids(inner, args)
        if len(po) != len(grids):
            raise ValueError(f"{len(po)} video feature blocks for {len(grids)} entries of video_grid_thw")
        items = []
        for k, (f, g) in enumerate(zip(po, grids)):
            T, h, w = g
            if f.shape[0] != T * h * w:
                raise ValueError(f"video {k}: {f.shape[0]} features for a {T}x{h}x{w} token grid")
            items.append(VideoItem(index=k, grid=g, x=f.reshape(T, h * w, f.shape[-1])))
        return items

    # --- per-video feature cache (vista.cache) ---------------------------------------------------
    @staticmethod
    def feature_variant(args: dict) -> str:
        """The call arguments besides the pixels that shape the features (part of the cache key)."""
        thw = args.get("video_grid_thw")
        return "" if thw is None else str([int(v) for v in thw.reshape(-1).tolist()])

    @staticmethod
    def feature_blocks(video_out) -> List[torch.Tensor]:
        """Per-video feature blocks: (t*h*w, D) each."""
        po = video_out.pooler_output
        return [po] if isinstance(po, torch.Tensor) else list(po)

    @staticmethod
    def features_output(blocks):
        """A get_video_features output made of cached blocks (no vision tower ran)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(blocks))

    @staticmethod
    def assemble(video_out, items, pruned, config):
        new = type(video_out)(**dict(video_out.items()))
        new.pooler_output = tuple(pv.tokens for pv in pruned)
        return new

    @staticmethod
    def image_features(inner, args: dict):
        return inner.get_image_features(args["pixel_values"], args.get("image_grid_thw"), return_dict=True)

    # --- scout input ----------------------------------------------------------------------------
    def scout_pixels(self, args: dict, k: int, inner=None) -> torch.Tensor:
        thw = args["video_grid_thw"]
        sizes = thw.prod(-1).tolist()
        start = int(sum(sizes[:k]))
        vc = inner.config.vision_config
        px = args["pixel_values_videos"][start : start + int(sizes[k])]
        return unpatchify_video(px, thw[k].tolist(), int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size))

    # --- positions ----------------------------------------------------------------------------
    def before_forward(self, state, inner, args, items, pruned):
        """Store the kept raster indices; recompute the vision rows of given ``position_ids``."""
        state.kept = [pv.frame_index * (it.grid[1] * it.grid[2]) + pv.token_index for it, pv in zip(items, pruned)]
        pos = args.get("position_ids")
        ids = args.get("input_ids")
        tt = args.get("mm_token_type_ids")
        if pos is None or ids is None or tt is None or pos.dim() != 3:
            return  # the stock forward computes them through the patched get_rope_index
        new, deltas = inner.get_rope_index(
            ids,
            tt,
            image_grid_thw=args.get("image_grid_thw"),
            video_grid_thw=args.get("video_grid_thw"),
            second_per_grid_ts=args.get("second_per_grid_ts"),
            attention_mask=args.get("attention_mask") if isinstance(args.get("attention_mask"), torch.Tensor) else None,
        )
        new = new.to(pos.device, pos.dtype)
        args["position_ids"] = torch.cat([pos[:1], new], 0) if pos.shape[0] == 4 else new
        inner.rope_deltas = deltas

    def patch_model_extra(self, state, model, inner):
        patch_attr(state, inner, "get_rope_index",
                   PatchedMethod(_make_get_rope_index, model, inner, self, inner.get_rope_index))

    def _rope_index(self, state, inner, orig, input_ids, types, image_grid_thw, video_grid_thw, second_per_grid_ts,
                    attention_mask, kwargs):
        """``get_rope_index`` of a batch with pruned videos: each pruned video run is expanded back
        to its full grid (:func:`_expand_row`), the stock ``orig`` numbers the expanded,
        left-padded batch, and every token takes the position of its place in the expanded row
        (:func:`_positions_of_rows`). Returns ((3, B, L) position ids, (B, 1) rope deltas)."""
        m = self.merge(inner.config)
        grids = [(int(t), int(h) // m, int(w) // m) for t, h, w in video_grid_thw.tolist()]
        full = [t * h * w for t, h, w in grids]
        short = [retained_count(t, h * w, state.config.retention) for t, h, w in grids]
        kept = state.kept
        B, L = input_ids.shape
        dev = input_ids.device
        rows = []  # (expanded ids, expanded types, map old valid index -> new index, valid count)
        vk = 0
        for b in range(B):
            valid = attention_mask[b].bool() if attention_mask is not None else torch.ones(L, dtype=torch.bool, device=dev)
            (ids_x, ty_x, index_map), vk = _expand_row(input_ids[b][valid], types[b][valid].to(dev), vk, full, short,
                                                       kept, state.config.retention, dev)
            rows.append((ids_x, ty_x, index_map, int(valid.sum())))
        x_ids, x_ty, x_mask = _left_pad(rows, input_ids.dtype, types.dtype, dev)
        pos_x, delta_x = orig(x_ids, x_ty, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                              second_per_grid_ts=second_per_grid_ts, attention_mask=x_mask, **kwargs)
        return _positions_of_rows(rows, pos_x, delta_x, attention_mask, B, L, dev)

    # --- processor ----------------------------------------------------------------------------
    @staticmethod
    def check_processor(processor):
        if not hasattr(processor, "video_processor") or not hasattr(processor, "video_token"):
            raise ValueError(f"processor must be the model's Qwen2_5_VLProcessor, got {type(processor).__name__}")

    @staticmethod
    def patch_processor(state, processor):
        orig = processor.replace_video_token

        def replace_video_token(video_inputs, video_idx, **kwargs):
            cfg = state.config
            if cfg.retention >= 1.0:
                return orig(video_inputs, video_idx, **kwargs)
            t, H, W = (int(v) for v in video_inputs["video_grid_thw"][video_idx])
            m = int(processor.video_processor.merge_size)
            n = retained_count(t, (H // m) * (W // m), cfg.retention)
            return processor.video_token * n

        patch_attr(state, processor, "replace_video_token", _InstanceHook(replace_video_token))


def _expand_row(ids_b, ty_b, vk, full, short, kept, retention, dev):
    """One batch row (its valid tokens ``ids_b`` / token types ``ty_b``) with every pruned video
    run (type 2, ``short[k]`` tokens) expanded to its full ``full[k]`` tokens; unpruned runs and
    text stay. Returns ((expanded ids, expanded types, index of each old token in the expanded
    row: the kept raster indices for a pruned video once known), index of the next video)."""
    vals, counts = torch.unique_consecutive(ty_b, return_counts=True)
    new_ids, new_ty, index_map = [], [], []
    o = n = 0
    for v, c in zip(vals.tolist(), counts.tolist()):
        seg_ids, seg_ty = ids_b[o : o + c], ty_b[o : o + c]
        if v == 2:
            if vk >= len(full):
                raise ValueError("more video placeholder runs in input_ids than entries in video_grid_thw")
            if c == full[vk]:
                new_ids.append(seg_ids)
                new_ty.append(seg_ty)
                index_map.append(torch.arange(n, n + c, device=dev))
                n += c
            elif c == short[vk]:
                new_ids.append(seg_ids[:1].expand(full[vk]))
                new_ty.append(seg_ty[:1].expand(full[vk]))
                if kept is not None and vk < len(kept) and kept[vk].numel() == c:
                    sel = kept[vk].to(dev)
                else:  # kept tokens not known yet (generate prepares positions before prefill)
                    sel = torch.arange(c, device=dev)
                index_map.append(n + sel)
                n += full[vk]
            else:
                raise ValueError(
                    f"video {vk}: {c} placeholder tokens, expected {short[vk]} (retention "
                    f"{retention}) or {full[vk]} (unpruned)"
                )
            vk += 1
        else:
            new_ids.append(seg_ids)
            new_ty.append(seg_ty)
            index_map.append(torch.arange(n, n + c, device=dev))
            n += c
        o += c
    return (torch.cat(new_ids), torch.cat(new_ty), torch.cat(index_map)), vk


def _left_pad(rows, ids_dtype, types_dtype, dev):
    """The expanded rows as one left-padded batch: (ids, token types, attention mask), each
    (B, longest expanded row)."""
    B = len(rows)
    Lx = max(r[0].shape[0] for r in rows)
    x_ids = torch.zeros(B, Lx, dtype=ids_dtype, device=dev)
    x_ty = torch.zeros(B, Lx, dtype=types_dtype, device=dev)
    x_mask = torch.zeros(B, Lx, dtype=torch.long, device=dev)
    for b, (ii, tt, _, _) in enumerate(rows):
        x_ids[b, Lx - ii.shape[0]:] = ii
        x_ty[b, Lx - ii.shape[0]:] = tt.to(types_dtype)
        x_mask[b, Lx - ii.shape[0]:] = 1
    return x_ids, x_ty, x_mask


def _positions_of_rows(rows, pos_x, delta_x, attention_mask, B, L, dev):
    """Position ids (3, B, L) of the caller's tokens, read from the expanded batch's ``pos_x`` at
    each token's expanded index; rope deltas grow by the tokens the expansion added."""
    Lx = max(r[0].shape[0] for r in rows)
    position_ids = torch.zeros(3, B, L, dtype=pos_x.dtype, device=dev)
    deltas = delta_x.clone()
    for b, (ii, _, imap, n_valid) in enumerate(rows):
        off = Lx - ii.shape[0]
        vals = pos_x[:, b, off + imap]
        if attention_mask is not None:
            position_ids[:, b, attention_mask[b].bool()] = vals
        else:
            position_ids[:, b] = vals
        deltas[b] = delta_x[b] + (ii.shape[0] - n_valid)
    return position_ids, deltas


def _make_get_rope_index(model, inner, adapter, orig):
    """``get_rope_index`` wrapper: pruned videos get the positions of their kept tokens."""

    @functools.wraps(orig)
    def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None, **kwargs):
        st = get_state(model)
        if st is None or not st.active or video_grid_thw is None or mm_token_type_ids is None:
            return orig(input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                        second_per_grid_ts=second_per_grid_ts, attention_mask=attention_mask, **kwargs)
        return adapter._rope_index(st, inner, orig, input_ids, mm_token_type_ids, image_grid_thw,
                                   video_grid_thw, second_per_grid_ts, attention_mask, kwargs)

    return get_rope_index


ADAPTER = Qwen2_5_VLAdapter()
