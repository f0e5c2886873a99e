"""Features of a MIMFlow checkpoint at every depth, from one forward pass per mask ratio.

Depth names (the x-axis of Fig. 6):

- ``encoder``: the encoder's K output tokens *before* the projection to D
  (Table 5a's "Acc." is a linear probe on these, mean-pooled over K);
- ``latent``: the latent z (B, K, D) itself (clean, without the sigma noise);
- ``0`` .. ``B-1``: the output of flow block i, in the original token order
  (``LatentFlow.forward(z, y).block_outputs``);
- ``B.L`` (with ``layers=True``): the hidden state after transformer layer L
  of the deep block B (width ``flow_width``, before the final norm), put back
  into the original token order.

Every tensor (B, K, C) is pooled to one vector per image: ``mean`` over the K
tokens (default) or ``flat`` (K*C, token order kept).

The flow is run with label y = -1 (unconditional). The deep block is class
conditioned: with the true label its outputs would carry the label through
the class embedding, and a linear probe would read the answer back instead
of measuring what the latent encodes.

Masking draws from a CPU generator seeded by (seed, mask ratio, shard index),
so a feature depends neither on the device nor on how the work is split
across processes or resumed. Features are cached as NPZ shards under
``<cache>/<checkpoint sha256>-<settings hash>/`` by the shard engine
(:mod:`mimflow_lab.shards`): written atomically, a rerun skips finished
shards (and redoes damaged ones), and under ``torchrun`` rank r computes
shards r, r + W, ... while rank 0 merges them into ``features.npz`` and
deletes the shards. The settings hash covers the dataset's ``fingerprint``
(the files' names, sizes and mtimes), so images edited in place are a new
entry, never old features.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mimflow_core.atomic import write_json
from mimflow_core.config import ModelConfig
from mimflow_core.errors import one_line
from mimflow_core.distributed import current_process, dist_info
from mimflow_core.errors import MIMFlowError
from mimflow_lab.defaults import CACHE_ROOT
from mimflow_core.npz import NpzArrayReader
from mimflow_lab.metrics.npz import write_npz
from mimflow_lab.shards import ShardPlan, merge_shards, read_finished, run_shards

if TYPE_CHECKING:
    from mimflow_core.checkpoint import CheckpointInfo

POOLS = ("mean", "flat")
DEFAULT_CACHE = CACHE_ROOT / "features"
CACHE_VERSION = 2  # 2: keyed by the dataset's content fingerprint too


# ---------------------------------------------------------------------------- depth names
def depth_names(config: ModelConfig, layers: bool = False) -> list[str]:
    """Every depth of a model in forward order; deep-block layers sit between the last two blocks."""
    blocks = [str(i) for i in range(len(config.flow_blocks))]
    deep = len(blocks) - 1
    inner = [f"{deep}.{l}" for l in range(config.flow_blocks[-1])] if layers else []
    return ["encoder", "latent", *blocks[:-1], *inner, blocks[-1]]


def parse_depths(spec: str | Sequence[str], config: ModelConfig, layers: bool = False,
                 option: str = "--depths") -> list[str]:
    """Turn ``"all"`` or ``"encoder,latent,0,3"`` into depth names, refusing unknown ones.

    ``all`` means encoder, latent and every block (and every deep-block layer
    when ``layers``); ``block:N`` is accepted as an alias of ``N``. Errors name ``option``, the flag the
    user typed (``umap`` asks with ``--what``).
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise MIMFlowError(f"{option}: empty; use 'all' or names like encoder,latent,0")
    valid = depth_names(config, layers=True)
    names: list[str] = []
    for item in items:
        expanded = depth_names(config, layers) if item == "all" else [item.removeprefix("block:")]
        for name in expanded:
            if name not in valid:
                raise MIMFlowError(f"{option}: unknown depth {item!r}; valid: all, {', '.join(valid)}")
            if name not in names:
                names.append(name)
    order = {n: i for i, n in enumerate(valid)}
    return sorted(names, key=order.__getitem__)


def needs_layers(names: Sequence[str]) -> bool:
    return any("." in n for n in names)


# ---------------------------------------------------------------------------- one batch
@contextlib.contextmanager
def capture_layer_outputs(block: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the output of every transformer layer of a flow block (forward hooks, removed on exit)."""
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for layer in block.transformer.layers]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def pool_tokens(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, K, C) -> (B, C) mean over tokens, or (B, K*C) flattened."""
    return x.mean(1) if pool == "mean" else x.flatten(1)


@torch.no_grad()
def extract_batch(model: nn.Module, images: torch.Tensor, mask_ratio: float, *, pool: str = "mean",
                  layers: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Pooled features at every depth for one batch: one encoder pass and one flow pass."""
    enc = model.encode(images, mask_ratio=mask_ratio, generator=generator)
    unconditional = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
    deep = model.flow.blocks[-1]
    with capture_layer_outputs(deep) if layers else contextlib.nullcontext([]) as hidden:
        flow = model.flow(enc.z, unconditional)
    feats = {"encoder": enc.features, "latent": enc.z}
    feats.update({str(i): out for i, out in enumerate(flow.block_outputs)})
    last = len(flow.block_outputs) - 1
    feats.update({f"{last}.{l}": deep.permute(h) for l, h in enumerate(hidden)})
    return {name: pool_tokens(x, pool).float() for name, x in feats.items()}


# ---------------------------------------------------------------------------- settings and cache
@dataclass(frozen=True)
class FeatureSettings:
    """Everything a cached feature depends on besides the checkpoint's bytes."""

    data: str = "digits"
    split: str = "train"
    mask_ratio: float = 0.0
    pool: str = "mean"
    layers: bool = False
    seed: int = 0
    shard_size: int = 256         # images per shard = per forward pass; fixes the masking RNG stream
    max_samples: int | None = None  # class-balanced subset (seeded) instead of the whole split
    classes: int | None = None      # keep only the first N classes
    weights: str = "ema"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise MIMFlowError(f"--pool: {self.pool!r} is not one of {', '.join(POOLS)}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise MIMFlowError(f"--mask-ratio: {self.mask_ratio} must lie in [0, 1)")
        if self.shard_size < 1:
            raise MIMFlowError(f"shard size: {self.shard_size} must be >= 1")

    def key(self, fingerprint: str) -> str:
        """The cache key of these settings on data whose content has ``fingerprint`` (a path alone would
        serve old features after its images change)."""
        data = self.data if self.data == "digits" else str(Path(self.data).expanduser().resolve())
        blob = json.dumps({**asdict(self), "data": data, "fingerprint": fingerprint, "version": CACHE_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(root: str | os.PathLike, checkpoint_sha256: str, settings: FeatureSettings, fingerprint: str) -> Path:
    return Path(root).expanduser() / f"{checkpoint_sha256[:16]}-{settings.key(fingerprint)}"


def select_indices(labels: np.ndarray, max_samples: int | None, classes: int | None, seed: int) -> np.ndarray:
    """Indices into a split: the first ``classes`` classes, then a class-balanced subset of ``max_samples``.

    Balanced = ``max_samples // C`` per class (fewer where a class has fewer),
    drawn with ``seed``; the result is sorted, so it is a fixed list.
    """
    keep = np.flatnonzero(labels < classes) if classes else np.arange(len(labels))
    if max_samples is None or max_samples >= keep.size:
        return keep
    present = np.unique(labels[keep])
    per_class = max_samples // present.size
    if per_class < 1:
        raise MIMFlowError(f"--samples: {max_samples} is fewer than the {present.size} classes")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(keep[labels[keep] == c])[:per_class] for c in present]
    return np.sort(np.concatenate(chosen))


def _shard_generator(seed: int, mask_ratio: float, shard: int) -> torch.Generator:
    words = [seed, round(mask_ratio * 1_000_000), shard]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1)[0]))


# ---------------------------------------------------------------------------- inputs
def native_image_size(spec: str) -> int | None:
    """Side of the images stored in an ADM ``.npz`` (read from the header only), else None.

    Digits are upscaled and image folders centre-cropped to any size, so only
    an npz has a resolution of its own.
    """
    path = Path(spec).expanduser()
    if spec == "digits" or path.suffix != ".npz" or not path.is_file():
        return None
    try:
        with NpzArrayReader(path) as reader:
            shape = reader.shape
    except (MIMFlowError, OSError, ValueError, zipfile.BadZipFile):
        return None  # load_dataset reports what is wrong with the file
    return int(shape[1]) if len(shape) == 4 and shape[1] == shape[2] else None


def check_checkpoints(paths: Sequence[str | os.PathLike], data: str, *,
                      weights: str = "ema") -> list["CheckpointInfo"]:
    """Validate every checkpoint before any work and return their infos, refusing image sizes that differ.

    Each model is loaded (so a broken file fails here) and dropped again:
    callers load one model at a time with :func:`load_model` while they use
    it, so five MIMFlow-L checkpoints never sit in memory together. All must
    share one image size and channel count, matching the data's own
    resolution where the data has one (an npz).
    """
    from mimflow_lab import load_model

    if not paths:
        raise MIMFlowError("checkpoint: give at least one checkpoint file")
    infos = [load_model(p, weights=weights)[1] for p in paths]
    check_image_sizes(infos, data)
    return infos


def check_image_sizes(infos: Sequence["CheckpointInfo"], data: str) -> None:
    """Refuse checkpoints of different image sizes or channel counts, or of another size than an npz's images."""
    first = infos[0]
    for info in infos[1:]:
        if (info.config.image_size, info.config.channels) != (first.config.image_size, first.config.channels):
            raise MIMFlowError(f"{info.path}: trained on {info.config.image_size} px x {info.config.channels} "
                               f"channels, but {first.path} on {first.config.image_size} px x "
                               f"{first.config.channels}; compare checkpoints of one image size")
    size = native_image_size(data)
    if size is not None and size != first.config.image_size:
        raise MIMFlowError(f"{first.path}: trained on {first.config.image_size} px images, "
                           f"but {data} holds {size} px images")


# ---------------------------------------------------------------------------- the pass
def extract_depth_features(model: nn.Module, dataset, checkpoint_sha256: str, settings: FeatureSettings, *,
                           cache: str | os.PathLike | None = DEFAULT_CACHE, device: str | torch.device = "cpu",
                           num_workers: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Features at every depth of ``dataset`` (the split named in ``settings``), cached and resumable.

    Returns ``{depth name: (n, dim) float32, "labels": (n,), "indices": (n,)}``
    where ``indices`` index the dataset. With ``cache=None`` nothing is
    written (used by tests and by the naive benchmark baseline). Under an
    initialised process group every rank must call this; all get the result.
    """
    indices = select_indices(np.asarray(dataset.labels), settings.max_samples, settings.classes, settings.seed)
    keys = frozenset(depth_names(model.config, settings.layers)) | {"labels"}
    if cache is not None:
        # an entry with the deep-block layers holds every depth of one without them
        for candidate in [settings] + ([] if settings.layers else [replace(settings, layers=True)]):
            entry = cache_dir(cache, checkpoint_sha256, candidate, dataset.fingerprint)
            if (done := read_finished(entry / "features.npz", indices, keys)) is not None:
                return done
    process = current_process(device)
    folder = None if cache is None else cache_dir(cache, checkpoint_sha256, settings, dataset.fingerprint)
    if folder is None and process.world > 1:
        raise MIMFlowError("features: distributed extraction needs a cache directory to exchange shards")
    plan = ShardPlan(indices.size, settings.shard_size, folder, items=indices, keys=keys)

    def produce(work: tuple[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
        shard, (images, labels) = work
        feats = extract_batch(model, images.to(device), settings.mask_ratio, pool=settings.pool,
                              layers=settings.layers,
                              generator=_shard_generator(settings.seed, settings.mask_ratio, shard))
        return {**{k: v.cpu().numpy() for k, v in feats.items()}, "labels": labels.numpy().astype(np.int64)}

    run_shards(plan, produce, process, inputs=lambda todo: zip(todo, _batches(dataset, plan, todo, num_workers)),
               desc=f"features {settings.split} r={settings.mask_ratio}", progress=progress, leave=False)
    if folder is None:
        return merge_shards(plan)
    process.barrier()
    merged = folder / "features.npz"
    if process.is_main:
        result = merge_shards(plan)
        write_npz(merged, result)
        write_json(folder / "settings.json", {**asdict(settings), "checkpoint_sha256": checkpoint_sha256,
                                              "fingerprint": dataset.fingerprint, "num_samples": int(indices.size),
                                              "num_shards": plan.num_shards})
        plan.remove()
    process.barrier()
    if not process.is_main:
        result = read_finished(merged, indices, keys)
        if result is None:
            raise MIMFlowError(one_line(f"{merged}: rank {process.rank} cannot read what rank 0 merged; "
                                        "give every rank one shared --cache directory"))
    return result


def _batches(dataset, plan: ShardPlan, todo: list[int], num_workers: int):
    """One (images, labels) batch per shard in ``todo``, loaded with a DataLoader."""
    from torch.utils.data import DataLoader, Subset

    parts = [plan.indices(s) for s in todo]
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    # Only the globally last shard can be short, and it is last in `todo` too,
    # so fixed-size batches line up with shards.
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=max(map(len, parts), default=1), shuffle=False,
                        num_workers=num_workers)
    return iter(loader)


def export_features(checkpoint: str | os.PathLike, out: str | os.PathLike, *, depths: str | Sequence[str] = "all",
                    layers: bool = False, mask_ratio: float = 0.0, splits: Sequence[str] = ("train", "test"),
                    max_samples: int | None = None, data: str = "digits", pool: str = "mean",
                    weights: str = "ema", seed: int = 0, shard_size: int = 256,
                    cache: str | os.PathLike | None = DEFAULT_CACHE, device: str | torch.device = "cpu",
                    num_workers: int = 0, progress: bool = True) -> Path | None:
    """Write one NPZ: an (n, dim) float32 array per depth name, ``labels``, ``split`` (str) and ``index``
    (the image's index within its split), plus ``depths`` and ``class_names``. Returns the path on rank 0."""
    from mimflow_core.data import load_dataset
    from mimflow_lab import load_model

    model, info = load_model(checkpoint, weights=weights, device=device)  # one checkpoint: load once, then check
    check_image_sizes([info], data)
    names = parse_depths(depths, info.config, layers)
    parts = []
    for split in splits:
        dataset = load_dataset(data, info.config.image_size, split, channels=info.config.channels)
        settings = FeatureSettings(data=data, split=split, mask_ratio=mask_ratio, pool=pool,
                                   layers=needs_layers(names), seed=seed, shard_size=shard_size,
                                   max_samples=max_samples, weights=info.weights)
        feats = extract_depth_features(model, dataset, info.sha256, settings, cache=cache, device=device,
                                       num_workers=num_workers, progress=progress)
        parts.append((split, feats, dataset.class_names))
    if dist_info()[0] != 0:
        return None
    arrays = {name: np.concatenate([f[name] for _, f, _ in parts]) for name in names}
    arrays["labels"] = np.concatenate([f["labels"] for _, f, _ in parts])
    arrays["split"] = np.concatenate([np.full(len(f["labels"]), s) for s, f, _ in parts])
    arrays["index"] = np.concatenate([f["indices"] for _, f, _ in parts])
    arrays["depths"] = np.array(names)
    arrays["class_names"] = np.array(parts[0][2])
    out = Path(out)
    write_npz(out, arrays)
    return out
