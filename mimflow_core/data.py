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
stratified 10% (unstratified where a class is too small for that).

Nothing a file says can crash a scan or a load: unreadable, truncated,
oversized (decompression bombs) and odd-sized images are skipped and
counted; an npz's headers are checked against its real size before anything
is allocated; every message names the file on one printable line.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .errors import MIMFlowError, one_line
from .npz import NpzArrayReader, array_names
from .splits import canonical_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DIGITS_TEST_SIZE = 300
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0
# An image whose short side is below image_size / MAX_UPSCALE would be blown up
# more than this factor by the centre-crop resize: treated as "odd-sized".
MAX_UPSCALE = 4
# A file PIL opens from its header alone must also end as its format ends (PNG's IEND chunk, JPEG's EOI
# marker) somewhere in its last TAIL_BYTES (trailing padding allowed): else it was cut short.
TAIL_BYTES = 4096
END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9", "MPO": b"\xff\xd9"}
SKIP_REASONS = ("unreadable", "too large", "odd-sized")


def _fingerprint(parts: Sequence[bytes]) -> str:
    """A content key for the feature cache: a dataset's fingerprint changes whenever what it reads does."""
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _stamp(path: Path, stat: os.stat_result) -> bytes:
    """Name, size and modification time: a changed file changes them without being read whole."""
    return os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode()


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


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB view of ``image`` by its mode's real range: PIL's ``convert("RGB")`` clips 16-bit and 32-bit
    greys ("I;16", "I") and float greys ("F") at 255, so a 16-bit value of 30000 (of 65535) becomes white.

    Integer greys are read as 16-bit (value / 257, the range PNG and TIFF store); float greys as [0, 1]
    when no value exceeds 1, else as 0..255.
    """
    if image.mode.startswith("I"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float64))
        grey = grey * 255.0 if grey.max() <= 1.0 else grey
    else:
        return image.convert("RGB")
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1] (ADM's ``x / 127.5 - 1``)."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


def holdout_split(labels: np.ndarray, test_size: int | float, seed: int = SPLIT_SEED, *,
                  source: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train, test) index split; unstratified where stratifying cannot work.

    An integer ``test_size`` holds out exactly that many images (digits: 300), which scikit-learn's
    ``train_test_split`` guarantees across classes; every result depends on these indices staying fixed.
    Stratifying needs two images in every class and at least one per class on each side, which a small
    folder lacks: it then gets a plain seeded split instead of scikit-learn's ValueError. Fewer images than
    one to hold out and one to train on is a :class:`MIMFlowError` naming ``source``.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_test = test_size if isinstance(test_size, (int, np.integer)) else math.ceil(test_size * n)  # as sklearn does
    counts = np.bincount(labels) if n else np.zeros(0, int)
    counts = counts[counts > 0]
    if not 0 < n_test < n:
        raise MIMFlowError(f"{one_line(source)}: {n} image(s) in {counts.size} class(es); holding out {n_test} "
                           f"needs at least {n_test + 1}; use split 'all' or add images")
    stratify = labels if counts.min() >= 2 and min(n_test, n - n_test) >= counts.size else None
    train, test = train_test_split(np.arange(n), test_size=test_size, stratify=stratify, random_state=seed)
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
    """Base class: labels, class names, deterministic flip, ``set_epoch``.

    ``fingerprint`` changes whenever the content read changes (files edited in place under the same
    path): the feature cache keys its entries by it, so it never serves features of old pixels.
    """

    def __init__(self, labels: np.ndarray, class_names: Sequence[str], fingerprint: str, flip: bool, seed: int):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.fingerprint = fingerprint
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

    def __init__(self, images: torch.Tensor, labels: np.ndarray, class_names: Sequence[str], fingerprint: str,
                 flip: bool = False, seed: int = 0):
        super().__init__(labels, class_names, fingerprint, flip, seed)
        self.images = images

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]


class ImageFolderDataset(ImageDataset):
    """Files decoded with PIL on access, ``center_crop_arr`` applied."""

    def __init__(self, files: Sequence[Path], labels: np.ndarray, class_names: Sequence[str], fingerprint: str,
                 image_size: int, flip: bool = False, seed: int = 0):
        super().__init__(labels, class_names, fingerprint, flip, seed)
        self.files = list(files)
        self.image_size = image_size

    def load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # a file changed since the scan
            raise MIMFlowError(one_line(f"{path}: cannot decode image ({e})")) from None
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
    index = _split_index(labels, split, DIGITS_TEST_SIZE, "digits")
    # scikit-learn ships the digits in its wheel: the same 1797 images everywhere, a constant fingerprint
    return TensorImageDataset(images[index], labels[index], [str(d) for d in range(10)], "sklearn-digits",
                              flip, seed)


def _split_index(labels: np.ndarray, split: str, test_size: int | float, source: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(labels))
    train, test = holdout_split(labels, test_size, source=source)
    return train if split == "train" else test


# ---------------------------------------------------------------------------- folders
@dataclass
class FolderScan:
    """What a directory scan found: kept files with their stamps (for the fingerprint), and what it skipped."""

    files: list[Path]
    stamps: list[bytes]  # relative name, size and mtime of each kept file
    labels: np.ndarray
    class_names: list[str]
    empty_classes: list[str]
    skipped: dict[str, list[Path]]  # SKIP_REASONS entry -> files


def scan_image_folder(root: Path, image_size: int) -> FolderScan:
    """List ``root/<class>/**/<image>`` and sort out the files that cannot be used, by reason (SKIP_REASONS).

    Only each file's header and last TAIL_BYTES are read (PIL is lazy), never its pixels, so a large
    tree scans quickly; a file cut short passes the header but not the tail. Over PIL's
    decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is "too large": its warning is an error here.
    Odd-sized = short side below ``image_size / MAX_UPSCALE``.
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, stamps, labels, names, empty = [], [], [], [], []
    skipped: dict[str, list[Path]] = {reason: [] for reason in SKIP_REASONS}
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for class_dir in class_dirs:
            kept = 0
            for path in sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
                problem, stat = _check_image(path, image_size)
                if problem is not None:
                    skipped[problem].append(path)
                    continue
                files.append(path)
                stamps.append(_stamp(path.relative_to(root), stat))
                kept += 1
            if not kept:
                empty.append(class_dir.name)
                continue
            labels += [len(names)] * kept
            names.append(class_dir.name)
    return FolderScan(files, stamps, np.asarray(labels, dtype=np.int64), names, empty, skipped)


def _check_image(path: Path, image_size: int) -> tuple[str | None, os.stat_result | None]:
    """Why ``path`` cannot be used (a SKIP_REASONS entry, or None) and, when it can, its stat: one open file."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            with Image.open(f) as im:
                size, image_format = im.size, im.format
            whole = _ends_whole(f, END_MARKERS.get(image_format), stat.st_size)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return "too large", None
    except (OSError, ValueError):
        return "unreadable", None
    if not whole:
        return "unreadable", None
    if min(size) * MAX_UPSCALE < image_size:
        return "odd-sized", None
    return None, stat


def _ends_whole(f, marker: bytes | None, size: int) -> bool:
    """Whether an open file's last TAIL_BYTES hold its format's end marker (formats without one here pass)."""
    if marker is None:
        return True
    f.seek(max(0, size - TAIL_BYTES))
    return marker in f.read()


def _report_scan(root: Path, scan: FolderScan, strict: bool) -> None:
    what = {"unreadable": "unreadable or truncated image(s)",
            "too large": f"too-large image(s), over PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels",
            "odd-sized": f"odd-sized image(s), short side < image_size/{MAX_UPSCALE}"}
    problems = []
    if scan.empty_classes:
        problems.append(f"{len(scan.empty_classes)} class folder(s) without usable images "
                        f"({', '.join(scan.empty_classes[:5])}{', ...' if len(scan.empty_classes) > 5 else ''})")
    problems += [f"{len(paths)} {what[reason]} (first: {paths[0]})" for reason, paths in scan.skipped.items() if paths]
    if not problems:
        return
    message = one_line(f"{root}: " + "; ".join(problems))
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
                raise MIMFlowError(one_line(f"{split_dirs[p]}: class folders differ from {split_dirs['train']}"))
        files = [f for s in scans for f in s.files]
        stamps = [t for s in scans for t in s.stamps]
        labels = np.concatenate([s.labels for s in scans])
    else:
        scan = scan_image_folder(root, image_size)
        _report_scan(root, scan, strict)
        names = scan.class_names
        index = _split_index(scan.labels, split, HOLDOUT_FRACTION, str(root)) if len(scan.files) else np.arange(0)
        files = [scan.files[i] for i in index]
        stamps = [scan.stamps[i] for i in index]
        labels = scan.labels[index]
    if not files:
        raise MIMFlowError(one_line(f"{root}: no usable images for split {split!r} "
                                    "(expected <root>/<class>/<image> or <root>/train|val/<class>/<image>)"))
    return ImageFolderDataset(files, labels, names, _fingerprint(stamps), image_size, flip, seed)


# ---------------------------------------------------------------------------- npz
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a label of 10**12 would make a name for every class below it


def _npz(path: Path, image_size: int, split: str, flip: bool, seed: int) -> TensorImageDataset:
    arr, labels = _read_npz(path)
    if labels is None:
        labels, names = np.zeros(len(arr), np.int64), ["unlabelled"]
    else:
        if labels.shape != (len(arr),):
            raise MIMFlowError(one_line(f"{path}: arr_1 must hold one label per image ({len(arr)}), "
                                        f"got shape {labels.shape}"))
        if labels.min() < 0 or labels.max() >= MAX_CLASSES:
            raise MIMFlowError(one_line(f"{path}: arr_1 labels must lie in 0..{MAX_CLASSES - 1}, "
                                        f"got {labels.min()}..{labels.max()}"))
        labels = labels.astype(np.int64)
        names = [str(c) for c in range(int(labels.max()) + 1)]
    index = _split_index(labels, split, HOLDOUT_FRACTION, str(path))
    arr, labels = arr[index], labels[index]
    if arr.shape[1:3] != (image_size, image_size) or arr.shape[-1] == 1:
        arr = np.stack([center_crop_arr(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert("RGB"),
                                        image_size) for a in arr])
    images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TensorImageDataset(images, labels, names, _fingerprint([_stamp(path.resolve(), path.stat())]), flip, seed)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``arr_0`` and ``arr_1`` (None when absent) of an ADM npz, never allocating what a header merely claims."""
    names = array_names(path)
    if "arr_0" not in names:
        raise MIMFlowError(one_line(f"{path}: no arr_0 (expected ADM npz: arr_0 uint8 NHWC, labels in arr_1)"))
    images = _npz_array(path, "arr_0", _images_problem)
    return images, _npz_array(path, "arr_1", _labels_problem) if "arr_1" in names else None


def _npz_array(path: Path, name: str, problem: Callable[[tuple[int, ...], np.dtype], str | None]) -> np.ndarray:
    """One member, read only once its header passes ``problem(shape, dtype)`` (the reader checks the bytes)."""
    with NpzArrayReader(path, name) as reader:
        if (wrong := problem(reader.shape, reader.dtype)) is not None:
            raise MIMFlowError(one_line(f"{path}: {wrong}"))
        return reader.read_all()


def _images_problem(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3) or min(shape[1:3]) < 1:
        return f"arr_0 must be uint8 (N, H, W, 3 or 1), got {dtype} {shape}"
    return "arr_0 holds no images" if shape[0] < 1 else None


def _labels_problem(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    return None if dtype.kind in "iu" else f"arr_1 must hold integer class labels, got {dtype} {shape}"


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
