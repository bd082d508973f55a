"""Training data of the scout recipe: Visual Genome region descriptions as (image, phrase) pairs.

* :func:`load_region_descriptions` reads VG's ``region_descriptions.json`` plus image folder(s)
  holding ``{image_id}.jpg`` into :class:`RegionSample` records (whole image, region phrase);
* :func:`split_by_image` holds out a share of the images for validation;
* :class:`RegionDataset` / :class:`RegionCollator` turn samples into the batch dict of
  :func:`vista.scout.train.objective.compute_scout_losses`.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

_LAYOUT = ('expected [{"id": image_id, "regions": [{"region_id", "image_id", "phrase", '
           '"x", "y", "width", "height"}, ...]}, ...]')


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
    image_dirs = _check_reader_args(json_path, image_dir, min_words, max_images)
    data = _read_region_json(os.fspath(json_path))
    if max_images is not None:
        data = data[:max_images]

    index = _image_index(image_dirs)
    samples: List[RegionSample] = []
    for i, entry in enumerate(data):
        at = f"json_path[{i}]"
        image_id, regions = _check_image_entry(entry, at)
        for j, reg in enumerate(regions):
            rat = f'{at}["regions"][{j}]'
            _check_region(reg, rat, image_id)
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


def _check_reader_args(json_path, image_dir, min_words, max_images) -> List[str]:
    """Type/range checks of :func:`load_region_descriptions`' arguments; returns the image folders."""
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
    return image_dirs


def _read_region_json(json_path: str) -> list:
    """The parsed file: a list of image entries (ValueError when not JSON or not a list)."""
    try:
        with open(json_path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"json_path {json_path!r} is not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"json_path: top level must be a list of images, got {type(data).__name__}; {_LAYOUT}")
    return data


def _check_image_entry(entry, at: str) -> Tuple[int, list]:
    """``(image id, regions)`` of one image entry ``{"id": int, "regions": [...]}``, checked."""
    if not isinstance(entry, dict):
        raise ValueError(f"{at}: must be an object, got {type(entry).__name__}; {_LAYOUT}")
    for key in ("id", "regions"):
        if key not in entry:
            raise ValueError(f'{at}: missing "{key}"; {_LAYOUT}')
    image_id = entry["id"]
    if not _is_int(image_id):
        raise ValueError(f'{at}["id"]: must be an int image id, got {image_id!r}')
    regions = entry["regions"]
    if not isinstance(regions, list):
        raise ValueError(f'{at}["regions"]: must be a list, got {type(regions).__name__}')
    return image_id, regions


def _check_region(reg, rat: str, image_id: int) -> None:
    """One region object: every key of VG's layout present, with the right type and image id."""
    if not isinstance(reg, dict):
        raise ValueError(f"{rat}: must be an object, got {type(reg).__name__}; {_LAYOUT}")
    for key in ("region_id", "image_id", "phrase", "x", "y", "width", "height"):
        if key not in reg:
            raise ValueError(f'{rat}: missing "{key}"; {_LAYOUT}')
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


def _samples_fingerprint(samples: Sequence[RegionSample]) -> str:
    """SHA-256 over the (image id, region id, phrase, bbox) of ``samples`` in order; image paths
    are left out, so moving the image folder keeps a checkpoint resumable."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.image_id, s.region_id, s.phrase, [float(v) for v in s.bbox]]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()

