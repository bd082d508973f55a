"""Fine-tuning recipe for the semantic scout (paper Appendix A): ``vista train-scout``.

The scout is a BLIP-2 image-text-matching model (``Blip2ForImageTextRetrieval``); the recipe keeps
the ViT frozen and trains the Q-Former side plus a Key Token Projector Φ with
L = ITM + ITC + α·Align (α = 2.0). Where each part lives:

    data.py        Visual Genome reader (:func:`load_region_descriptions`), :func:`split_by_image`,
                   :class:`RegionDataset` / :class:`RegionCollator`
    objective.py   the losses (:func:`compute_scout_losses`: ITC, ITM with online hard negatives,
                   soft top-K alignment), :class:`KeyTokenProjector` and its files, soft top-K
    trainer.py     :class:`ScoutTrainConfig`, :class:`ScoutTrainer` (loop, validation, best model),
                   crash-safe checkpoints and exact resume, :func:`train_scout`
    vista/cli/train_scout.py   the ``vista train-scout`` parser and command

Data: Visual Genome ``region_descriptions.json`` plus image folder(s) holding ``{image_id}.jpg``.
The output layout of :func:`train_scout` is described in ``trainer.py``.
"""
from .data import RegionCollator, RegionDataset, RegionSample, load_region_descriptions, split_by_image
from .objective import (
    PROJECTOR_CONFIG_NAME,
    PROJECTOR_WEIGHTS_NAME,
    KeyTokenProjector,
    compute_scout_losses,
    freeze_vision_encoder,
    key_visual_feature,
    load_projector,
    patch_importance,
    positive_pair_mask,
    sample_hard_negatives,
    save_projector,
    soft_topk_mask,
)
from .trainer import (  # noqa: F401 - the file names and RESUME_SAFE_FIELDS are public, not in __all__
    LOG_NAME,
    RESUME_SAFE_FIELDS,
    TRAINER_STATE_NAME,
    ScoutTrainConfig,
    ScoutTrainer,
    read_trainer_state,
    train_scout,
)

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

# The command line lives in vista/cli/train_scout.py (it imports this package): its names are
# resolved on first use, so ``from vista.scout.train import add_train_scout_parser`` keeps working.
_CLI_NAMES = ("add_train_scout_parser", "cmd_train_scout", "check_model_source")


def __getattr__(name):
    if name in _CLI_NAMES:
        from ...cli import train_scout as cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CLI_NAMES))
