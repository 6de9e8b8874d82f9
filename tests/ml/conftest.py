"""Fixtures for the ml tests: small generated smear-like images, a tiny model file, the real data when present."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taleqani-all"
CLASSES = ["Benign", "Early", "Pre", "Pro"]
# One distinct "cell" colour per class so a tiny model can learn them in a few steps.
COLOURS = {"Benign": (200, 60, 60), "Early": (60, 200, 60), "Pre": (60, 60, 200), "Pro": (200, 200, 60)}


def draw_smear(label: str, seed: int, size: int = 64) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (235 + rng.randint(-10, 10), 220, 225))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y, r = rng.randint(8, size - 8), rng.randint(8, size - 8), rng.randint(5, 12)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS[label])
    return image


def make_dataset(root: Path, per_class: int = 24, size: int = 64) -> Path:
    for label in CLASSES:
        folder = root / label
        folder.mkdir(parents=True)
        for number in range(1, per_class + 1):
            draw_smear(label, CLASSES.index(label) * 1000 + number, size).save(folder / f"WBC-{label}-{number:03d}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def smear_folder(tmp_path_factory) -> Path:
    """A class-subfolder data set of 4 x 24 generated 64x64 JPEGs, numbered like the real files."""
    return make_dataset(tmp_path_factory.mktemp("smears"))


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, smear_folder) -> Path:
    """A really trained (3 epochs, 64 px) mobilenetv3_lstm model file on the generated smears."""
    from ml.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(out), epochs=3, batch_size=16,
                         img_size=64, block_size=4, progress=False, augment_strength=0.0, label_smoothing=0.0)
    return train(config)


@pytest.fixture(scope="session")
def image_norm_model(tmp_path_factory, smear_folder) -> Path:
    """A 1-epoch, 48 px model that standardises each image (``input_norm="image"``), as the shipped one does."""
    from ml.train import TrainConfig, train

    out = tmp_path_factory.mktemp("image-norm-run")
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(out), epochs=1, batch_size=16,
                         img_size=48, block_size=4, progress=False, augment_strength=0.0, input_norm="image")
    return train(config)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "Pre").is_dir():
        pytest.skip(f"real smear images not present at {REAL_DATA} (the shared data set is only on CI and dev machines)")
    return REAL_DATA
