"""Image folders, leakage-free splits, manifests, balancing and augmentation.

A data set is a folder of class subfolders (``DIR/<class>/<image>``). Splits are
made on *groups*, never on single images: a group is a run of consecutively
numbered images of one class (neighbours often come from the same slide) merged
with every exact duplicate (same sha256). Whole groups go to train, val or test,
so no image, duplicate or augmented copy can sit on two sides.
"""
from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

# Image reading and the normalisation constants live in the torch-free runtime, which serving shares.
from .runtime.images import (  # noqa: F401
    _BLACK, _MIN_STD, FRAMINGS, IMAGENET_MEAN, IMAGENET_STD, INPUT_NORMS, ImageError, cell_box, fit_to_input, load_image,
    sha256_file, to_rgb)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
# --------------------------------------------------------------------------- scanning

@dataclass
class Sample:
    path: str  # relative to the data root, with forward slashes: "Pre/WBC-...-001.jpg"
    label: str
    sha256: str
    group: str = ""
    split: str = ""


@dataclass
class ScanResult:
    classes: list[str]
    samples: list[Sample]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def counts(self) -> Counter:
        return Counter(sample.label for sample in self.samples)


def scan_folder(root: str | Path, classes: Sequence[str] | None = None, verify: bool = True) -> ScanResult:
    """List the images of a class-subfolder tree. Unreadable files are reported, not fatal."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"no class subfolders in {root}")
    samples, errors = [], []
    for label in classes:
        folder = root / label
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder missing: {folder}")
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            relative = f"{label}/{path.name}"
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                if path.name not in ("SHA256SUMS", "README.md"):
                    errors.append((relative, f"not an image file type ({path.suffix or 'no extension'})"))
                continue
            if verify:
                try:
                    load_image(path)
                except ImageError as exc:
                    errors.append((relative, str(exc)))
                    continue
            samples.append(Sample(relative, label, sha256_file(path)))
    return ScanResult(list(classes), samples, errors)


# --------------------------------------------------------------------------- grouping and splitting

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def neighbour_block(path: str, block_size: int) -> str:
    """The run of consecutive numbers an image belongs to: 'Pre/...-0042.jpg' -> 'Pre#2' for size 20."""
    label, name = path.split("/", 1)
    match = _NUMBER.search(Path(name).stem)
    if match is None:
        return f"{label}#{name}"  # unnumbered files stand alone
    return f"{label}#{(int(match.group(1)) - 1) // block_size}"


def assign_groups(samples: list[Sample], block_size: int = 20, group_of=None) -> None:
    """Set ``sample.group``: the neighbour block (or ``group_of(sample)``), merged across exact duplicates."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    base = [group_of(s) if group_of else neighbour_block(s.path, block_size) for s in samples]
    first_with_hash: dict[str, str] = {}
    for sample, key in zip(samples, base):
        find(key)
        if sample.sha256 in first_with_hash:
            union(first_with_hash[sample.sha256], key)
        else:
            first_with_hash[sample.sha256] = key
    for sample, key in zip(samples, base):
        sample.group = find(key)


def split_groups(
    samples: list[Sample],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> None:
    """Set ``sample.split`` so whole groups go to one side, class proportions kept.

    Groups are dealt per majority class: shuffled with the seed, then each group goes
    to the split furthest below its target share of that class's images.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError("split fractions must sum to 1")
    members: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        members[sample.group].append(sample)
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, items in members.items():
        majority = Counter(s.label for s in items).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        rng.shuffle(groups)
        total = sum(len(members[g]) for g in groups)
        filled = dict.fromkeys(SPLITS, 0)
        # Small splits first so val and test are never left empty by large early groups.
        for group in groups:
            size = len(members[group])
            deficit = {s: fractions[i] * total - filled[s] for i, s in enumerate(SPLITS)}
            target = max(reversed(SPLITS), key=lambda s: deficit[s] / max(fractions[SPLITS.index(s)], 1e-9))
            filled[target] += size
            for sample in members[group]:
                sample.split = target


def make_split(
    root: str | Path,
    block_size: int = 20,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    classes: Sequence[str] | None = None,
    group_of=None,
) -> ScanResult:
    scan = scan_folder(root, classes)
    assign_groups(scan.samples, block_size, group_of)
    split_groups(scan.samples, fractions, seed)
    return scan


MANIFEST_FIELDS = ("path", "label", "split", "group", "sha256")


def write_manifest(scan: ScanResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        for s in scan.samples:
            writer.writerow({"path": s.path, "label": s.label, "split": s.split, "group": s.group, "sha256": s.sha256})
    return path


def read_manifest(path: str | Path) -> list[Sample]:
    with open(path, newline="") as handle:
        return [Sample(row["path"], row["label"], row["sha256"], row["group"], row["split"]) for row in csv.DictReader(handle)]


def manifest_classes(samples: Iterable[Sample]) -> list[str]:
    return sorted({s.label for s in samples})


def check_manifest(samples: list[Sample], root: str | Path | None = None) -> list[str]:
    """Leakage and integrity problems of a split, as readable sentences (empty when clean)."""
    problems = []
    sides: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        sides[("path", s.path)].add(s.split)
        sides[("sha256", s.sha256)].add(s.split)
        sides[("group", s.group)].add(s.split)
    for (kind, key), where in sides.items():
        if len(where) > 1:
            problems.append(f"{kind} {key} is on several sides: {sorted(where)}")
    if root is not None:
        missing = [s.path for s in samples if not (Path(root) / s.path).is_file()]
        if missing:
            problems.append(f"{len(missing)} manifest files are missing under {root}, e.g. {missing[:3]}")
    return problems


# --------------------------------------------------------------------------- balancing

def balanced_indices(labels: Sequence[int], mode: str = "oversample", seed: int = 0) -> list[int]:
    """Indices of one training epoch with classes balanced.

    ``oversample`` repeats minority images (each repeat gets its own augmentation),
    ``undersample`` draws the majority down to the smallest class, ``none`` keeps all, and so does
    ``weight``, which balances through the loss instead (see ``class_weights``).
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    if mode in ("none", "weight"):
        chosen = list(range(len(labels)))
    elif mode == "oversample":
        target = max(len(v) for v in by_class.values())
        chosen = []
        for idx in by_class.values():
            chosen += idx * (target // len(idx)) + rng.sample(idx, target % len(idx))
    elif mode == "undersample":
        target = min(len(v) for v in by_class.values())
        chosen = [i for idx in by_class.values() for i in rng.sample(idx, target)]
    else:
        raise ValueError(f"unknown balancing mode {mode!r}: use oversample, undersample, weight or none")
    rng.shuffle(chosen)
    return chosen


def class_weights(labels: Sequence[int], n_classes: int) -> list[float]:
    """Inverse-frequency loss weights, scaled so a balanced set gets 1.0 for every class."""
    counts = Counter(labels)
    missing = [c for c in range(n_classes) if not counts[c]]
    if missing:
        raise ValueError(f"class indices {missing} have no training images: class weights are undefined")
    return [len(labels) / (n_classes * counts[c]) for c in range(n_classes)]


# --------------------------------------------------------------------------- tensors and augmentation

def preprocess(image: Image.Image, size: int, input_norm: str = "imagenet", framing: str = "none"):
    """PIL RGB -> normalised float tensor (3, size, size). The one preprocessing used everywhere."""
    import torch

    image = fit_to_input(image, size, framing)
    return normalise(torch.from_numpy(np.array(image)).permute(2, 0, 1), input_norm)


_MEAN_STD: dict = {}  # torch ImageNet mean/std, built once; the normalisations are listed in ml.runtime.images


def normalise(images, mode: str = "imagenet"):
    """uint8 image tensor(s) (..., 3, H, W) -> float model input, by the normalisation ``mode``."""
    import torch

    if mode == "image":
        return standardise_per_image(images)
    if mode != "imagenet":
        raise ValueError(f"unknown input normalisation {mode!r}: use one of {', '.join(INPUT_NORMS)}")
    if not _MEAN_STD:  # built once per process: this runs for every training image
        _MEAN_STD["mean"] = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        _MEAN_STD["std"] = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images.float() / 255.0 - _MEAN_STD["mean"]) / _MEAN_STD["std"]


def standardise_per_image(images):
    """uint8 image tensor(s) (..., 3, H, W) -> each channel minus its mean, over its standard deviation.

    The statistics come from the image's non-black pixels (all pixels when fewer than 1% are
    non-black), so the black surround of a segmented cell does not dilute them. A per-channel gain
    or offset of the whole image (white balance, stain hue, exposure, contrast) leaves the result
    unchanged up to rounding and clipping: ``standardise_per_image(a * x + b) == standardise_per_image(x)``."""
    x = images.float() / 255.0
    foreground = (x.amax(dim=-3, keepdim=True) > _BLACK).float()
    pixels = x.shape[-1] * x.shape[-2]
    count = foreground.sum(dim=(-2, -1), keepdim=True)
    foreground = foreground.where(count >= 0.01 * pixels, foreground.new_ones(()))
    count = foreground.sum(dim=(-2, -1), keepdim=True)
    mean = (x * foreground).sum(dim=(-2, -1), keepdim=True) / count
    var = (((x - mean) * foreground) ** 2).sum(dim=(-2, -1), keepdim=True) / count
    return (x - mean) / var.sqrt().clamp_min(_MIN_STD)


def training_augmentation(size: int, strength: float = 1.0, stain: str = "none", stain_strength: float = 0.05,
                          illumination: float = 0.0, blur_prob: float = 0.0, blur_sigma: float = 1.5,
                          rgb_gain: float = 0.0, crop_prob: float = 0.0, crop_scale: float = 0.5,
                          jpeg_prob: float = 0.0, downscale_prob: float = 0.0, affine_fill: str = "black",
                          scale_jitter: float = 0.0):
    """Dihedral flips/rotations, small affine shifts and colour jitter scaled by ``strength`` (on uint8
    tensors), followed by the acquisition steps of ``stain.acquisition_augmentation`` (HED stain jitter,
    illumination, focus blur). With ``crop_prob`` a random crop of ``crop_scale``..1 of the area at
    aspect 3:4..4:3 resized back (another framing or camera aspect), with ``jpeg_prob`` a JPEG
    re-encoding at quality 30..95, with ``downscale_prob`` a lower camera resolution (``RandomDownscale``).
    ``affine_fill="median"`` fills the corners a small rotation uncovers with the image's median colour
    (as a microscope field rotated in the camera looks), not black. ``scale_jitter`` > 0 widens the affine
    scale to U(1 - s, 1 + s), so that absolute size is a weaker cue. None when nothing is switched on."""
    from torchvision.transforms import v2

    from .stain import acquisition_augmentation

    acquisition = acquisition_augmentation(stain, stain_strength, illumination, blur_prob, blur_sigma, rgb_gain)
    if crop_prob > 0:
        acquisition.insert(0, v2.RandomApply([v2.RandomResizedCrop(size, scale=(crop_scale, 1.0),
                                                                   ratio=(3 / 4, 4 / 3), antialias=True)],
                                             p=crop_prob))
    if downscale_prob > 0:
        acquisition.append(RandomDownscale(downscale_prob))
    if jpeg_prob > 0:
        acquisition.append(v2.RandomApply([v2.JPEG((30, 95))], p=jpeg_prob))
    if affine_fill not in ("black", "median"):
        raise ValueError(f"unknown affine fill {affine_fill!r}: use black or median")
    if strength <= 0:
        return v2.Compose(acquisition) if acquisition else None

    class RandomRot90(v2.Transform):
        def __call__(self, x):
            import torch

            return torch.rot90(x, int(torch.randint(0, 4, ()).item()), dims=(-2, -1))

    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        (MedianFillAffine if affine_fill == "median" else v2.RandomAffine)(
            degrees=15 * strength, translate=(0.06 * strength, 0.06 * strength),
            scale=(1 - scale_jitter, 1 + scale_jitter) if scale_jitter > 0 else (1 - 0.08 * strength, 1 + 0.12 * strength)),
        v2.ColorJitter(brightness=0.2 * strength, contrast=0.2 * strength,
                       saturation=0.2 * strength, hue=0.03 * strength),
        *acquisition,
    ])


class RandomDownscale:
    """Camera resolution: with probability ``p`` the image is resized down by a factor U(``low``, 1) and back up
    (antialiased; bilinear or bicubic at random), as a lower-resolution camera or a rescaled upload looks."""

    def __init__(self, p: float = 0.3, low: float = 0.3):
        self.p, self.low = float(p), float(low)

    def __call__(self, image):
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        draws = torch.rand(3, dtype=torch.float64)
        if float(draws[0]) >= self.p:
            return image
        height, width = image.shape[-2:]
        factor = self.low + float(draws[1]) * (1 - self.low)
        mode = InterpolationMode.BICUBIC if float(draws[2]) < 0.5 else InterpolationMode.BILINEAR
        small = F.resize(image, [max(1, round(height * factor)), max(1, round(width * factor))],
                         interpolation=mode, antialias=True)
        return F.resize(small, [height, width], interpolation=mode, antialias=True)


class MedianFillAffine:
    """A small random rotation, shift and scale (as ``v2.RandomAffine``) whose uncovered corners take the image's
    median colour per channel, as a field rotated in the camera looks, instead of black."""

    def __init__(self, degrees: float, translate: tuple[float, float], scale: tuple[float, float]):
        self.degrees, self.translate, self.scale = float(degrees), translate, scale

    def __call__(self, image):
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        u = torch.rand(4, dtype=torch.float64).tolist()
        height, width = image.shape[-2:]
        angle = (2 * u[0] - 1) * self.degrees
        shift = [round((2 * u[1] - 1) * self.translate[0] * width), round((2 * u[2] - 1) * self.translate[1] * height)]
        scale = self.scale[0] + u[3] * (self.scale[1] - self.scale[0])
        fill = [float(v) for v in image.reshape(image.shape[0], -1).median(dim=1).values]
        return F.affine(image, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR, fill=fill)


class ImageTensorDataset:
    """Decoded images held in memory as uint8 tensors (the whole set is a few hundred MB)."""

    def __init__(self, root: str | Path, samples: list[Sample], classes: Sequence[str], size: int,
                 augment=None, progress: bool = False, input_norm: str = "imagenet", framing: str = "none"):
        import torch

        self.input_norm = input_norm
        self.framing = framing
        self.samples = samples
        self.classes = list(classes)
        self.size = size
        self.augment = augment
        self.labels = [self.classes.index(s.label) for s in samples]
        images = []
        iterator = samples
        if progress:
            from tqdm import tqdm

            iterator = tqdm(samples, desc="loading images", leave=False)
        for s in iterator:
            image = fit_to_input(load_image(Path(root) / s.path), size, framing)
            images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        self.images = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return normalise(image, self.input_norm), self.labels[index]
