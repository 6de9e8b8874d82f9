"""Knowledge distillation (``python -m ml train --teacher A.pt [B.pt ...]``): the teachers' soft labels for the
training images, and the loss that pulls the student towards them."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import data as mldata

if TYPE_CHECKING:
    from .train import TrainConfig


@torch.no_grad()
def teacher_soft_targets(config: TrainConfig, train_set, classes, log) -> torch.Tensor:
    """The teachers' tempered probabilities for every training image, averaged over the 8 flips and
    90° rotations (the label-preserving part of the augmentation) and over the teachers. Only training
    images are used."""
    from .checkpoint import model_summary

    targets, summaries = [], []
    for file in teacher_files(config.teacher):
        soft, payload = one_teacher_soft_targets(config, file, train_set, classes, log)
        targets.append(soft)
        summaries.append(model_summary(payload))
    config.extra.setdefault("ancestors", {})["teachers"] = summaries
    return sum(targets) / len(targets)


def teacher_files(teacher: str | list[str] | None) -> list[str]:
    """The teacher model files of a config (one path in runs made before several were allowed)."""
    if not teacher:
        return []
    return [teacher] if isinstance(teacher, str) else list(teacher)


@torch.no_grad()
def one_teacher_soft_targets(config: TrainConfig, file: str, train_set, classes, log) -> tuple[torch.Tensor, dict]:
    """One teacher's soft labels (see ``teacher_soft_targets``) and its payload; refuses a teacher of another split."""
    from .checkpoint import load_model

    teacher, payload = load_model(file)
    if list(payload["classes"]) != list(classes):
        raise ValueError(f"teacher classes {payload['classes']} differ from {classes}")
    teacher_split = payload["training"].get("manifest_sha256")
    if teacher_split != mldata.sha256_file(Path(config.manifest)):
        raise ValueError("the teacher was trained on another split: its soft labels could leak test images")
    log(f"distillation: teacher {payload['model_version']} (alpha {config.distill_alpha}, T {config.distill_temperature})")
    targets = []
    starts = range(0, len(train_set), 64)
    if config.progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="teacher soft labels", leave=False)
    for start in starts:
        images = mldata.normalise(train_set.images[start:start + 64], payload.get("input_norm", "imagenet"))
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (images, images.flip(-1)) for k in range(4)]
        probs = sum(torch.softmax(teacher(v) / config.distill_temperature, dim=1) for v in views)
        targets.append(probs / len(views))
    log(f"distillation: soft labels for {len(train_set)} training images ready")
    return torch.cat(targets), payload


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: KL(teacher || student) at temperature T, scaled by T^2 to keep gradient size."""
    log_student = torch.log_softmax(student_logits / temperature, dim=1)
    return nn.functional.kl_div(log_student, teacher_probs, reduction="batchmean") * temperature ** 2
