"""LLaVA-OneVision / LLaVA-Video (``LlavaOnevisionForConditionalGeneration``, transformers 5.x).

Video path of the stock model: SigLIP -> projector -> bilinear 2x2 pooling (27x27 -> 14x14 = 196
tokens a frame) -> all frames concatenated -> one ``image_newline`` token appended to the video.
The processor emits ``T * 196 + 1`` ``<video>`` placeholders.

With Vista (retention < 1): the pooled (T, 196, D) features are pruned to
``retained_count(T, 196, retention)`` rows; ``config.newline == "one"`` keeps the model's own
newline token after them (its layout for videos), ``"none"`` drops it. The patched processor emits
``retained_count + 1`` ("one") or ``retained_count`` (none) placeholders. The LLM sees ordinary 1-D
positions over the shorter sequence.

Ragged batches (videos with different frame counts in one call), which the stock processor cannot
stack: the patched processor then returns ``pixel_values_videos`` as a list of (T_k, 3, H, W)
tensors, and the patched model encodes them video by video (at any retention, 1.0 included).
"""
from __future__ import annotations

import json
import math
from typing import List

import torch

from ..budget import retained_count
from .common import AdapterBase, VideoItem, _InstanceHook, patch_attr

FAMILY = "llava_onevision"
MODEL_TYPES = ("llava_onevision",)


class LlavaOnevisionAdapter(AdapterBase):
    family = FAMILY
    model_types = MODEL_TYPES
    model_class = "LlavaOnevisionForConditionalGeneration"
    inner_attrs = ("get_video_features", "language_model")
    temporal_pairs = False

    # --- model structure (matches, inner, video_token_id and norm_stats: AdapterBase) -----------
    @staticmethod
    def placeholder_ids(config) -> List[int]:
        return [int(config.video_token_id), int(config.image_token_id)]

    @staticmethod
    def pooled_hw(config):
        side = config.vision_config.image_size // config.vision_config.patch_size
        return math.ceil(side / 2), math.ceil(side / 2)

    # --- counts -------------------------------------------------------------------------------
    @staticmethod
    def placeholder_count(item: VideoItem, config) -> int:
        T, h, w = item.grid
        if config.retention >= 1.0:
            return T * h * w + 1
        return retained_count(T, h * w, config.retention) + (1 if config.newline == "one" else 0)

    @staticmethod
    def full_count(item: VideoItem) -> int:
        T, h, w = item.grid
        return T * h * w + 1

    # --- video features -----------------------------------------------------------------------
    @staticmethod
    def video_kwargs(args: dict) -> dict:
        return {
            "pixel_values_videos": args.get("pixel_values_videos"),
            "vision_feature_layer": args.get("vision_feature_layer"),
            "vision_feature_select_strategy": args.get("vision_feature_select_strategy"),
        }

    def grids(self, inner, args: dict):
        pv = args["pixel_values_videos"]
        h, w = self.pooled_hw(inner.config)
        if isinstance(pv, (list, tuple)):  # ragged batch: one (T_k, 3, H, W) tensor a video
            return [(int(v.shape[-4]), h, w) for v in pv]
        return [(int(pv.shape[1]), h, w)] * int(pv.shape[0])

    def split(self, inner, video_out, args: dict) -> List[VideoItem]:
        po = video_out.pooler_output  # (B_v, T*N + 1, D), or a list of (T_k*N + 1, D) (ragged)
        h, w = self.pooled_hw(inner.config)
        N = h * w
        blocks = list(po) if isinstance(po, (list, tuple)) or po.dim() == 3 else None
        if blocks is None or any(b.dim() != 2 or (b.shape[0] - 1) % N for b in blocks):
            raise ValueError(f"unexpected LLaVA-OneVision video features {type(po).__name__} (N={N} a frame)")
        items = []
        for k, b in enumerate(blocks):
            T = (b.shape[0] - 1) // N
            it = VideoItem(index=k, grid=(T, h, w), x=b[: T * N].reshape(T, N, b.shape[-1]))
            it.extra["newline"] = b[T * N :]
            items.append(it)
        return items

    # --- per-video feature cache (vista.cache) ---------------------------------------------------
    @staticmethod
    def feature_variant(args: dict) -> str:
        """The call arguments besides the pixels that shape the features (part of the cache key)."""
        return json.dumps({"layer": args.get("vision_feature_layer"),
                           "strategy": args.get("vision_feature_select_strategy")}, default=str)

    @staticmethod
    def feature_blocks(video_out) -> List[torch.Tensor]:
        """Per-video feature blocks of a stacked batch: (T*N + 1, D) each (newline row last)."""
        return list(video_out.pooler_output)

    @staticmethod
    def features_output(blocks):
        """A get_video_features output made of cached blocks (no vision tower ran)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=torch.stack(list(blocks)))

    @staticmethod
    def assemble(video_out, items, pruned, config):
        rows = []
        for it, pv in zip(items, pruned):
            rows.append(pv.tokens)
            if config.newline == "one" or config.retention >= 1.0:
                rows.append(it.extra["newline"].to(pv.tokens.dtype))
        feats = torch.cat(rows, 0).unsqueeze(0)  # (1, total, D): the forward flattens (0, 1)
        new = type(video_out)(**dict(video_out.items()))
        new.pooler_output = feats
        return new

    @staticmethod
    def image_features(inner, args: dict):
        return inner.get_image_features(
            args["pixel_values"],
            args.get("image_sizes"),
            vision_feature_layer=args.get("vision_feature_layer"),
            vision_feature_select_strategy=args.get("vision_feature_select_strategy"),
            batch_num_images=args.get("batch_num_images"),
            return_dict=True,
        )

    # --- scout input ----------------------------------------------------------------------------
    @staticmethod
    def scout_pixels(args: dict, k: int, inner=None) -> torch.Tensor:
        """(T, 3, H, W) normalised pixels of video k."""
        return args["pixel_values_videos"][k]

    def before_forward(self, state, inner, args, items, pruned):
        return None

    # --- processor ----------------------------------------------------------------------------
    @staticmethod
    def check_processor(processor):
        if type(processor).__name__ != "LlavaOnevisionProcessor" and not hasattr(processor, "num_image_tokens"):
            raise ValueError(
                f"processor must be the model's LlavaOnevisionProcessor, got {type(processor).__name__}"
            )

    @staticmethod
    def patch_processor(state, processor):
        orig = processor.replace_video_token  # bound class method

        def replace_video_token(video_inputs, video_idx, **kwargs):
            cfg = state.config
            if cfg.retention >= 1.0:
                return orig(video_inputs, video_idx, **kwargs)
            video = video_inputs["pixel_values_videos"][video_idx]
            T = len(video) if isinstance(video, (list, tuple)) else int(video.shape[0])
            side = math.ceil(int(math.sqrt(processor.num_image_tokens)) / 2)
            n = retained_count(T, side * side, cfg.retention) + (1 if cfg.newline == "one" else 0)
            return processor.video_token * n

        patch_attr(state, processor, "replace_video_token", _InstanceHook(replace_video_token))

        # Ragged batches (videos with different frame counts): the stock video processor stacks
        # all videos into one tensor and fails; process them one by one and hand the model a list.
        orig_pv = processor._process_videos

        def _process_videos(videos, **kwargs):
            from transformers.video_utils import make_batched_videos

            vids = make_batched_videos(videos)
            lengths = {len(v) if isinstance(v, (list, tuple)) else int(v.shape[0]) for v in vids}
            if len(lengths) <= 1:
                return orig_pv(videos, **kwargs)
            pvs = []
            for v in vids:
                out = processor.video_processor([v], **kwargs)["pixel_values_videos"]
                pvs.append(out[0] if isinstance(out, torch.Tensor) else torch.as_tensor(out[0]))
            data = {"pixel_values_videos": pvs}
            reps = [processor.replace_video_token(data, video_idx=k, **kwargs) for k in range(len(pvs))]
            return data, reps

        patch_attr(state, processor, "_process_videos", _InstanceHook(_process_videos))
        skip = list(getattr(processor, "skip_tensor_conversion", []) or [])
        patch_attr(state, processor, "skip_tensor_conversion", skip + ["pixel_values_videos"])


ADAPTER = LlavaOnevisionAdapter()
