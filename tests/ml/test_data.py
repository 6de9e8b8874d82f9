"""Data: reading images of any kind, leakage-free splits, manifests and balancing."""
from __future__ import annotations

import io
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ml import data
from ml.data import ImageError

from .conftest import CLASSES, draw_smear


def test_load_image_returns_rgb_for_any_mode():
    for mode in ["L", "RGBA", "P", "CMYK", "I;16", "F", "1", "LA"]:
        image = Image.new("RGB", (40, 30), (120, 30, 200)).convert(mode) if mode not in ("I;16", "F") \
            else Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16 if mode == "I;16" else np.float32))
        loaded = data.load_image(image)
        assert loaded.mode == "RGB" and loaded.size == (40, 30), mode


def test_load_image_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (60, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert data.load_image(path).size == (20, 60)


@pytest.mark.parametrize("payload, reason", [
    (b"this is not an image", "not a recognised image format"),
    (b"", "not a recognised image format"),
])
def test_load_image_rejects_non_images_with_a_reason(tmp_path, payload, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=reason):
        data.load_image(path)


def test_load_image_rejects_truncated_files(tmp_path):
    buffer = io.BytesIO()
    draw_smear("Pre", 1, 128).save(buffer, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="could not be decoded"):
        data.load_image(path)


def test_scan_reports_unreadable_files_by_name_and_goes_on(tmp_path, smear_folder):
    root = tmp_path / "data"
    shutil.copytree(smear_folder, root)
    (root / "Pre" / "WBC-Pre-999.jpg").write_bytes(b"garbage")
    (root / "Pro" / "notes.txt").write_text("not an image")
    scan = data.scan_folder(root)
    reported = dict(scan.errors)
    assert set(reported) == {"Pre/WBC-Pre-999.jpg", "Pro/notes.txt"}
    assert "not a recognised image format" in reported["Pre/WBC-Pre-999.jpg"]
    assert len(scan.samples) == 4 * 24


def test_neighbour_blocks_group_consecutive_numbers():
    assert data.neighbour_block("Pre/WBC-Malignant-Pre-001.jpg", 20) == "Pre#0"
    assert data.neighbour_block("Pre/WBC-Malignant-Pre-020.jpg", 20) == "Pre#0"
    assert data.neighbour_block("Pre/WBC-Malignant-Pre-021.jpg", 20) == "Pre#1"


def test_split_keeps_duplicates_and_neighbours_together_and_class_proportions(tmp_path, smear_folder):
    root = tmp_path / "data"
    shutil.copytree(smear_folder, root)
    # Exact duplicates far apart in the numbering must still land on one side.
    for label in CLASSES:
        shutil.copyfile(root / label / f"WBC-{label}-001.jpg", root / label / f"WBC-{label}-023.jpg")
    scan = data.make_split(root, block_size=4, seed=3)
    assert data.check_manifest(scan.samples, root) == []
    by_path = {s.path: s for s in scan.samples}
    for label in CLASSES:
        assert by_path[f"{label}/WBC-{label}-001.jpg"].split == by_path[f"{label}/WBC-{label}-023.jpg"].split
        block = [by_path[f"{label}/WBC-{label}-{n:03d}.jpg"].split for n in range(5, 9)]
        assert len(set(block)) == 1, "a run of neighbours was split"
    shares = Counter(s.split for s in scan.samples)
    assert shares["train"] > shares["val"] > 0 and shares["test"] > 0
    for label in CLASSES:
        per_split = Counter(s.split for s in scan.samples if s.label == label)
        assert set(per_split) == {"train", "val", "test"}, f"{label} missing from a split"


def test_manifest_round_trip_and_leak_detection(tmp_path, smear_folder):
    scan = data.make_split(smear_folder, block_size=4)
    path = data.write_manifest(scan, tmp_path / "m.csv")
    samples = data.read_manifest(path)
    assert [(s.path, s.split, s.group) for s in samples] == [(s.path, s.split, s.group) for s in scan.samples]
    samples[0].split, samples[1].split = "train", "test"  # same group (neighbours 1 and 2) on two sides
    assert any("several sides" in problem for problem in data.check_manifest(samples))


def test_committed_manifest_of_the_real_data_has_no_leak(real_data):
    from pathlib import Path

    manifest = Path(data.__file__).parent / "splits" / "taleqani-all.csv"
    samples = data.read_manifest(manifest)
    assert data.check_manifest(samples, real_data) == []
    assert len(samples) == 2598
    total = Counter(s.label for s in samples)
    for split, share in [("train", 0.7), ("val", 0.15), ("test", 0.15)]:
        counts = Counter(s.label for s in samples if s.split == split)
        for label in total:
            assert abs(counts[label] / total[label] - share) < 0.06, (split, label)


@pytest.mark.parametrize("mode", ["oversample", "undersample", "weight", "none"])
def test_balancing(mode):
    labels = [0] * 30 + [1] * 10 + [2] * 5
    chosen = data.balanced_indices(labels, mode, seed=1)
    counts = Counter(labels[i] for i in chosen)
    expected = {"oversample": {0: 30, 1: 30, 2: 30}, "undersample": {0: 5, 1: 5, 2: 5}, "none": {0: 30, 1: 10, 2: 5},
                "weight": {0: 30, 1: 10, 2: 5}}
    assert counts == expected[mode]
    assert chosen == data.balanced_indices(labels, mode, seed=1)  # reproducible


def test_class_weights_balance_the_loss_by_inverse_frequency():
    labels = [0] * 30 + [1] * 10 + [2] * 5
    weights = data.class_weights(labels, 3)
    assert weights == pytest.approx([45 / 90, 45 / 30, 45 / 15])
    # Each class then carries the same total weight in the loss.
    assert {round(w * n, 6) for w, n in zip(weights, (30, 10, 5))} == {15.0}
    with pytest.raises(ValueError, match="no training images"):
        data.class_weights([0, 0, 2], 3)


def test_augmentation_keeps_shape_and_changes_pixels():
    import torch

    augment = data.training_augmentation(64)
    image = torch.from_numpy(np.array(draw_smear("Pro", 2))).permute(2, 0, 1).contiguous()
    torch.manual_seed(0)
    out = augment(image)
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert not torch.equal(out, image)
