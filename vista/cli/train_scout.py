"""``vista train-scout``: fine-tune the BLIP-2 semantic scout (the recipe is :mod:`vista.scout.train`)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from ..scout.train.trainer import ScoutTrainConfig, _latest_checkpoint, train_scout

# The recipe's hyper-parameters on the command line, in --help order: ScoutTrainConfig field -> help.
# The option is the field's name with dashes (--batch-size), its default the field's default, its
# type the field's (int or float) unless it has choices; metavars as below (none: argparse's own).
_FIELD_HELP = {
    "lr": "AdamW learning rate",
    "batch_size": "micro-batch of image-phrase pairs (hard negatives are mined inside it)",
    "grad_accum": "micro-batches per optimizer step",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear learning-rate warm-up, in optimizer steps",
    "lr_schedule": "learning-rate schedule after the warm-up",
    "max_grad_norm": "gradient-norm clipping (0: no clipping)",
    "max_steps": "optimizer steps (None: --epochs passes over the training split)",
    "epochs": "passes over the training split when --max-steps is not given",
    "alpha": "weight of the alignment loss",
    "top_k": "K of the soft top-K patch mask of the alignment loss",
    "mask_temperature": "temperature T of the soft top-K mask sigmoid((S - tau) / T)",
    "mask_score_norm": "'max': rescale S to max 1 before the soft top-K mask ('none': the paper's mask "
                       "on eq. 6 scores)",
    "itc_temperature": "temperature of the image-text contrastive loss",
    "projector_hidden": "hidden width of the Key Token Projector (None: the vision width)",
    "projector_dropout": "dropout inside the Key Token Projector",
    "min_words": "drop region phrases with fewer words",
    "max_text_len": "phrase length limit in tokens",
    "val_fraction": "share of the images held out for validation",
    "max_eval_batches": "validation micro-batches per evaluation",
    "eval_every": "validate every N optimizer steps (0: only at the end)",
    "save_every": "write a resumable checkpoint-N/ every N optimizer steps (0: only at the end)",
    "save_total_limit": "checkpoint-N folders kept (0: keep all)",
    "seed": "seed of the split, shuffling and initialisation",
    "num_workers": "data-loader worker processes",
}
_CHOICES = {"lr_schedule": ("constant", "cosine"), "mask_score_norm": ("none", "max")}
_METAVAR = dict({"top_k": "K", "mask_temperature": "T"}, **dict.fromkeys((
    "batch_size", "grad_accum", "warmup_steps", "max_steps", "epochs", "projector_hidden", "min_words",
    "max_text_len", "max_eval_batches", "eval_every", "save_every", "save_total_limit", "num_workers"), "N"))


def add_train_scout_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-scout`` on an ``argparse`` sub-parser collection; returns the parser."""
    p = subparsers.add_parser(
        "train-scout",
        help="fine-tune the BLIP-2 semantic scout on Visual Genome region descriptions (paper App. A)",
        description="Fine-tune the semantic scout: L = ITM + ITC + alpha*Align with a frozen ViT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every option's help shows its default
    )
    _add_run_options(p)
    _add_hyper_options(p)
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="disable bf16 autocast on CUDA (the default shown is the bf16 setting)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (the default shown is the progress-bar setting)")
    p.set_defaults(func=cmd_train_scout)
    return p


def _add_run_options(p) -> None:
    """What to train and where: model, data, output, resume, device, --max-images."""
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


def _add_hyper_options(p) -> None:
    """One option per entry of ``_FIELD_HELP``, its default and type from :class:`ScoutTrainConfig`."""
    d = ScoutTrainConfig()
    hints = typing.get_type_hints(ScoutTrainConfig)
    for name, help_text in _FIELD_HELP.items():
        if name in _CHOICES:
            kw = {"choices": _CHOICES[name]}
        else:  # int, Optional[int] or float
            kw = {"type": int if int in (hints[name], *typing.get_args(hints[name])) else float}
        if name in _METAVAR:
            kw["metavar"] = _METAVAR[name]
        p.add_argument("--" + name.replace("_", "-"), default=getattr(d, name), help=help_text, **kw)


def _config_from_args(args) -> ScoutTrainConfig:
    fields = {f.name for f in dataclasses.fields(ScoutTrainConfig)}
    return ScoutTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def check_model_source(model: str) -> str:
    """``--model`` must be a complete local BLIP-2 folder, or a hub id whose files are already in the
    local Hugging Face cache: nothing is downloaded, and an unreachable hub fails now, on one line,
    instead of after transformers' connection retries. Raises ValueError naming ``--model``."""
    from ..scout.scout import _REPO_ID, ScoutCheckpointError, check_checkpoint_dir

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
    fresh = args.resume is None or (args.resume == "auto" and _latest_checkpoint(os.fspath(args.output))[0] is None)
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

