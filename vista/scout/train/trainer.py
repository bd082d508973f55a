"""The training loop of the scout recipe: configuration, ``ScoutTrainer`` (gradient accumulation,
AdamW, validation, best model), crash-safe checkpoints with exact resume, and :func:`train_scout`.

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

import dataclasses
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

from ...atomic import fsync_dir, fsync_tree, remove_dir, temporary_sibling, write_dir_atomically, write_file_atomically
from .data import RegionCollator, RegionDataset, _is_int, _samples_fingerprint, load_region_descriptions, split_by_image
from .objective import (
    PROJECTOR_CONFIG_NAME,
    PROJECTOR_WEIGHTS_NAME,
    KeyTokenProjector,
    _set_train_mode,
    compute_scout_losses,
    freeze_vision_encoder,
    load_projector,
    save_projector,
)

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

        write_dir_atomically(directory, write)
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
            remove_dir(os.path.join(self.output_dir, name))

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

            write_dir_atomically(best_dir, write)
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
        tmp = temporary_sibling(os.path.join(self.output_dir, "result"))
        try:
            if self.best_step is not None and os.path.isdir(best_dir):
                os.makedirs(tmp)
                for name in os.listdir(best_dir):
                    src = os.path.join(best_dir, name)
                    if os.path.isfile(src):
                        shutil.copy2(src, os.path.join(tmp, name))
            else:
                self.save_model(tmp)
            fsync_tree(tmp)
            for name in sorted(os.listdir(tmp)):
                src = os.path.join(tmp, name)
                if os.path.isfile(src):
                    os.replace(src, os.path.join(self.output_dir, name))
            fsync_dir(self.output_dir)
        finally:
            remove_dir(tmp)


# --------------------------------------------------------------------------------------------------
# crash-safe files: checkpoints in temporary folders renamed into place, a safe trainer-state reader

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
    write_file_atomically(path, b"".join(x + b"\n" for x in keep), keep_mode=True)


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
    resume_from, state = _resume_point(resume_from, output_dir, model_path)

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


def _resume_point(resume_from: Optional[str], output_dir, model_path: str) -> Tuple[Optional[str], Optional[dict]]:
    """``(checkpoint folder, its trainer state)`` to resume from, or ``(None, None)`` for a fresh start.

    ``"auto"`` picks the newest complete ``checkpoint-N`` of ``output_dir`` (a note on stderr says
    which, or that none is complete); a named folder must hold a readable ``trainer_state.pt``.
    """
    if resume_from == "auto":
        resume_from, state = _latest_checkpoint(os.fspath(output_dir))
        if resume_from is None:
            if _checkpoint_dirs(os.fspath(output_dir)):
                _note(f"no complete checkpoint in {os.fspath(output_dir)!r}: starting from {model_path!r}")
        else:
            _note(f"resuming from {resume_from}")
        return resume_from, state
    if resume_from is not None:
        if not os.path.isfile(os.path.join(resume_from, TRAINER_STATE_NAME)):
            raise FileNotFoundError(f"resume_from {resume_from!r} is not a checkpoint (no {TRAINER_STATE_NAME})")
        return resume_from, read_trainer_state(os.path.join(resume_from, TRAINER_STATE_NAME))
    return None, None
