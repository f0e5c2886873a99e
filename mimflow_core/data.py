"""Datasets: scikit-learn's digits (offline default), ImageFolder trees, ADM npz files.

Every dataset yields ``(image, label)`` with ``image`` a float tensor (C, H, W) in
[-1, 1] and ``label`` an int, and exposes ``.num_classes``, ``.class_names`` and
``.labels`` (np.ndarray of int64), so the trainer and the analyses never care
where the pixels came from.

Preprocessing follows ADM (openai/guided-diffusion ``image_datasets.py``):
repeated BOX halving while the short side is at least twice the target, a
BICUBIC resize of the short side to the target, a centre crop, and (training
only, when asked) a random horizontal flip. The flip is a deterministic
function of ``(seed, epoch, index)`` so a resumed run sees the same images.
Analyses get deterministic images by leaving ``flip=False`` (the default).

Splits: ``"train"``, ``"test"`` or ``"all"``. ``digits`` holds out a fixed
stratified 300 of its 1797 images; a directory with ``train/`` and ``val/`` (or
``test/``) sub-folders uses them; any other directory or npz holds out a fixed
stratified 10%.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .errors import MIMFlowError
from .splits import canonical_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DIGITS_TEST_SIZE = 300
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0
# An image whose short side is below image_size / MAX_UPSCALE would be blown up
# more than this factor by the centre-crop resize: treated as "odd-sized".
MAX_UPSCALE = 4


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's resize: BOX-halve while short side >= 2*size, BICUBIC to size, centre crop.

    Returns a uint8 array (image_size, image_size, 3).
    """
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top: top + image_size, left: left + image_size]


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with C = 1 or 3 -> RGB: a greyscale model's images as every RGB reader (the Inception, ADM's npz,
    LPIPS, DINO/CLIP) sees a saved greyscale image, three equal channels (a view, no copy); RGB unchanged."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1] (ADM's ``x / 127.5 - 1``)."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def holdout_split(labels: np.ndarray, test_size: int | float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train, test) index split; falls back to unstratified if a class is a singleton.

    An integer ``test_size`` holds out exactly that many images (digits: 300), which scikit-learn's
    ``train_test_split`` guarantees across classes; every result depends on these indices staying fixed.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    stratify = labels if counts[counts > 0].min(initial=2) >= 2 else None
    train, test = train_test_split(index, test_size=test_size, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(test)


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Exactly ``n`` sorted indices with every class as often as possible (±1), drawn with ``seed``.

    Classes take turns, each contributing its images in a seeded random order;
    a class that runs out drops out of the rotation. Unlike the feature cache's
    ``select_indices`` (``n // C`` per class, so 250 of 256 and none below C),
    it returns the ``n`` a command was asked for, however few.
    """
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    turns = [(rank, c, i) for c, queue in enumerate(queues) for rank, i in enumerate(queue)]
    chosen = [i for _, _, i in sorted(turns)[:n]]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _flip_coin(seed: int, epoch: int, index: int) -> bool:
    """Deterministic fair coin per (seed, epoch, index): resumable flips."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class ImageDataset(Dataset):
    """Base class: labels, class names, deterministic flip, ``set_epoch``."""

    def __init__(self, labels: np.ndarray, class_names: Sequence[str], flip: bool, seed: int):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the flip pattern of this epoch (call with the sampler's epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.flip and _flip_coin(self.seed, self.epoch, index):
            image = image.flip(-1)
        return image, int(self.labels[index])


class TensorImageDataset(ImageDataset):
    """Images already decoded and resized, held in one float tensor (N, C, H, W)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, class_names: Sequence[str],
                 flip: bool = False, seed: int = 0):
        super().__init__(labels, class_names, flip, seed)
        self.images = images

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]


class ImageFolderDataset(ImageDataset):
    """Files decoded with PIL on access, ``center_crop_arr`` applied."""

    def __init__(self, files: Sequence[Path], labels: np.ndarray, class_names: Sequence[str],
                 image_size: int, flip: bool = False, seed: int = 0):
        super().__init__(labels, class_names, flip, seed)
        self.files = list(files)
        self.image_size = image_size

    def load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise MIMFlowError(f"{path}: cannot decode image ({e})") from None
        return uint8_to_tensor(center_crop_arr(image, self.image_size))


# ---------------------------------------------------------------------------- digits
def load_digits_images(image_size: int, channels: int = 3) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1797 8x8 digits (values 0..16), bilinearly upscaled, in [-1, 1].

    Bilinear with half-pixel centres (``align_corners=False``, same as PIL's
    BILINEAR when enlarging) keeps strokes smooth; the grey value is copied to
    every channel.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x * 2.0 - 1.0).clamp(-1.0, 1.0).expand(-1, channels, -1, -1).contiguous()
    return x, digits.target.astype(np.int64)


def _digits(image_size: int, split: str, flip: bool, seed: int, channels: int) -> TensorImageDataset:
    images, labels = load_digits_images(image_size, channels)
    index = _split_index(labels, split, DIGITS_TEST_SIZE)
    return TensorImageDataset(images[index], labels[index], [str(d) for d in range(10)], flip, seed)


def _split_index(labels: np.ndarray, split: str, test_size: int | float) -> np.ndarray:
    if split == "all":
        return np.arange(len(labels))
    train, test = holdout_split(labels, test_size)
    return train if split == "train" else test


# ---------------------------------------------------------------------------- folders
@dataclass
class FolderScan:
    """What a directory scan found: kept files and the problems it skipped."""

    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    empty_classes: list[str]
    unreadable: list[Path]
    odd_sized: list[Path]

    @property
    def skipped(self) -> int:
        return len(self.unreadable) + len(self.odd_sized)


def scan_image_folder(root: Path, image_size: int) -> FolderScan:
    """List ``root/<class>/**/<image>``; open each header to find unreadable or odd-sized files.

    Only the header is read (PIL is lazy), so a million-image tree scans in
    about a minute. Odd-sized = short side below ``image_size / MAX_UPSCALE``.
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels, names, empty, unreadable, odd = [], [], [], [], [], []
    for class_dir in class_dirs:
        candidates = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        kept = []
        for path in candidates:
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (OSError, ValueError, Image.DecompressionBombError):
                unreadable.append(path)
                continue
            if min(width, height) * MAX_UPSCALE < image_size:
                odd.append(path)
                continue
            kept.append(path)
        if not kept:
            empty.append(class_dir.name)
            continue
        files += kept
        labels += [len(names)] * len(kept)
        names.append(class_dir.name)
    return FolderScan(files, np.asarray(labels, dtype=np.int64), names, empty, unreadable, odd)


def _report_scan(root: Path, scan: FolderScan, strict: bool) -> None:
    problems = []
    if scan.empty_classes:
        problems.append(f"{len(scan.empty_classes)} class folder(s) without usable images "
                        f"({', '.join(scan.empty_classes[:5])}{', ...' if len(scan.empty_classes) > 5 else ''})")
    if scan.unreadable:
        problems.append(f"{len(scan.unreadable)} unreadable image(s) (first: {scan.unreadable[0]})")
    if scan.odd_sized:
        problems.append(f"{len(scan.odd_sized)} odd-sized image(s), short side < image_size/{MAX_UPSCALE} "
                        f"(first: {scan.odd_sized[0]})")
    if not problems:
        return
    message = f"{root}: " + "; ".join(problems)
    if strict:
        raise MIMFlowError(message + " (strict mode; fix or remove them)")
    warnings.warn(message + " -- skipped (pass strict=True / --strict to fail instead)", stacklevel=3)


def _folder(root: Path, image_size: int, split: str, flip: bool, seed: int, strict: bool) -> ImageFolderDataset:
    split_dirs = {"train": root / "train", "test": next((root / s for s in ("val", "test") if (root / s).is_dir()), None)}
    if split_dirs["train"].is_dir() and split_dirs["test"] is not None:
        parts = ["train", "test"] if split == "all" else [split]
        scans = [scan_image_folder(split_dirs[p], image_size) for p in parts]
        for p, s in zip(parts, scans):
            _report_scan(split_dirs[p], s, strict)
        names = scans[0].class_names
        for p, s in zip(parts[1:], scans[1:]):
            if s.class_names != names:
                raise MIMFlowError(f"{split_dirs[p]}: class folders differ from {split_dirs['train']}")
        files = [f for s in scans for f in s.files]
        labels = np.concatenate([s.labels for s in scans])
    else:
        scan = scan_image_folder(root, image_size)
        _report_scan(root, scan, strict)
        names = scan.class_names
        index = _split_index(scan.labels, split, HOLDOUT_FRACTION) if len(scan.files) else np.arange(0)
        files = [scan.files[i] for i in index]
        labels = scan.labels[index]
    if not files:
        raise MIMFlowError(f"{root}: no usable images for split {split!r} "
                           "(expected <root>/<class>/<image> or <root>/train|val/<class>/<image>)")
    return ImageFolderDataset(files, labels, names, image_size, flip, seed)


# ---------------------------------------------------------------------------- npz
def _npz(path: Path, image_size: int, split: str, flip: bool, seed: int) -> TensorImageDataset:
    try:
        with np.load(path) as data:
            if "arr_0" not in data:
                raise MIMFlowError(f"{path}: no arr_0 (expected ADM npz: arr_0 uint8 NHWC, labels in arr_1)")
            arr = data["arr_0"]
            labels = data["arr_1"].astype(np.int64) if "arr_1" in data else None
    except (OSError, ValueError) as e:
        raise MIMFlowError(f"{path}: cannot read npz ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise MIMFlowError(f"{path}: arr_0 must be uint8 (N, H, W, 3 or 1), got {arr.dtype} {arr.shape}")
    if labels is None:
        labels, names = np.zeros(len(arr), np.int64), ["unlabelled"]
    else:
        if labels.shape != (len(arr),) or (labels < 0).any():
            raise MIMFlowError(f"{path}: arr_1 must hold one non-negative label per image, got shape {labels.shape}")
        names = [str(c) for c in range(int(labels.max()) + 1)]
    index = _split_index(labels, split, HOLDOUT_FRACTION)
    arr, labels = arr[index], labels[index]
    if arr.shape[1:3] != (image_size, image_size) or arr.shape[-1] == 1:
        arr = np.stack([center_crop_arr(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert("RGB"),
                                        image_size) for a in arr])
    images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TensorImageDataset(images, labels, names, flip, seed)


# ---------------------------------------------------------------------------- entry point
def load_dataset(spec: str, image_size: int, split: str = "train", *, flip: bool = False,
                 strict: bool = False, seed: int = 0, channels: int = 3) -> ImageDataset:
    """Open a dataset by spec: ``"digits"``, an ImageFolder-style directory, or an ADM ``.npz``.

    ``flip=True`` enables ADM's random horizontal flip (training only); the
    default gives deterministic images for analyses. ``strict=True`` turns
    skipped files (empty class folders, unreadable or odd-sized images) into
    a :class:`MIMFlowError` instead of a warning. ``seed`` drives the flips.
    """
    split = canonical_split(split)
    if spec == "digits":
        return _digits(image_size, split, flip, seed, channels)
    if channels != 3:
        raise MIMFlowError(f"channels: only 'digits' supports channels={channels}; image files load as RGB")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(path, image_size, split, flip, seed, strict)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path, image_size, split, flip, seed)
    if not path.exists():
        raise MIMFlowError(f"{spec}: no such dataset (use 'digits', an image directory or an ADM .npz file)")
    raise MIMFlowError(f"{spec}: not a directory or .npz file")
