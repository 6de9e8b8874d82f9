"""Training: seeded, resumable, with checkpoints every epoch and an LRA-style learning-rate adjuster.

Outputs in ``out``: ``train.log`` (every epoch and every LRA decision), ``last.pt`` (full state to
resume), ``model.pt`` (the deployable model: weights, classes, preprocessing, temperature) and the
split manifest the run used.
"""
from __future__ import annotations

import copy
import logging
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import data as mldata
from . import models
from .checkpoint import save_model
from .distill import distillation_loss, teacher_soft_targets


@dataclass
class TrainConfig:
    data: str
    arch: str
    out: str
    manifest: str | None = None  # reuse this split; created in ``out`` when absent
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    img_size: int = 224
    seed: int = 0
    balance: str = "oversample"  # oversample | undersample | weight (loss) | none; training split only
    augment_strength: float = 1.0
    # Acquisition augmentation (training images only): HED stain jitter, illumination, focus blur.
    stain_augment: str = "none"  # none | hed
    stain_strength: float = 0.05
    illumination: float = 0.0  # brightness and gamma x U(1 - s, 1 + s)
    rgb_gain: float = 0.0  # white balance: R, G, B each x U(1 - s, 1 + s)
    blur_prob: float = 0.0
    blur_sigma: float = 1.5
    crop_prob: float = 0.0  # random crop of crop_scale..1 of the area, aspect 3:4..4:3 (framing, camera aspect)
    crop_scale: float = 0.5
    jpeg_prob: float = 0.0  # JPEG re-encoding at quality 30..95
    downscale_prob: float = 0.0  # camera resolution: down to x0.3..1 and back up
    affine_fill: str = "black"  # black | median: what the corners of a small rotation are filled with
    scale_jitter: float = 0.0  # > 0: the affine scale is U(1 - s, 1 + s) instead of 0.92..1.12 (cell size cue)
    input_norm: str = "imagenet"  # imagenet | image (per-image channel standardisation, ml.data.normalise)
    framing: str = "none"  # none | cell (a segmented cell cut to its own square, ml.runtime.images.FRAMINGS)
    # LRA: watch training accuracy until `threshold`, then validation loss.
    threshold: float = 0.9
    factor: float = 0.5
    patience: int = 2
    stop_patience: int = 3
    min_epochs: int = 0
    pretrained_weights: str | None = None
    # Knowledge distillation: soft labels from trained model files (trained on the same training split); with
    # several, their tempered probabilities are averaged (an ensemble teacher the student must fit in one model).
    teacher: str | list[str] | None = None
    init_weights: str | None = None  # start every weight from this model.pt (same arch), e.g. a from-scratch run
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    # > 0: keep an exponential moving average of the weights (decay per optimiser step), validate it each epoch and
    # ship it instead of the last or best raw weights (a flatter solution; LRA still steers the raw weights).
    ema_decay: float = 0.0
    num_workers: int = 0
    threads: int | None = None
    block_size: int = 20  # neighbour-run length when a split has to be made
    # Which manifest splits to train and validate on (cross-validation folds use "fold0", "fold1", ...).
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_splits: list[str] = field(default_factory=lambda: ["val"])  # empty: no validation (fixed epochs)
    task: str = "staging"  # "staging" | "screening"
    class_names: list[str] | None = None  # display names in folder order, e.g. ["blast", "normal"] for all/hem
    limit_per_class: int | None = None  # tiny runs (tests, smoke checks)
    classes: list[str] | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)  # facts found during the run (ancestors: init/teacher model summaries)


class LearningRateAdjuster:
    """In the spirit of the Keras "LRA" callback.

    While training accuracy is below ``threshold`` it watches training accuracy, afterwards
    validation loss. When the watched value has not improved for ``patience`` epochs it
    multiplies the learning rate by ``factor`` and restores the best weights so far. After
    ``stop_patience`` reductions without improvement it asks training to stop.
    """

    def __init__(self, optimizer, threshold=0.9, factor=0.5, patience=2, stop_patience=3, log=print):
        self.optimizer = optimizer
        self.threshold, self.factor = threshold, factor
        self.patience, self.stop_patience = patience, stop_patience
        self.log = log
        self.best_accuracy = -1.0
        self.lowest_val_loss = float("inf")
        self.wait = 0
        self.reductions_without_improvement = 0
        self.best_state: dict | None = None
        self.best_epoch = -1

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _set_lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def step(self, epoch: int, model: nn.Module, train_accuracy: float, val_loss: float) -> bool:
        """Record one epoch; returns True when training should stop."""
        if train_accuracy < self.threshold:
            monitor, improved = "train accuracy", train_accuracy > self.best_accuracy
            if improved:
                self.best_accuracy = train_accuracy
        else:
            monitor, improved = "val loss", val_loss < self.lowest_val_loss
            if improved:
                self.lowest_val_loss = val_loss
        if improved:
            self.wait = 0
            self.reductions_without_improvement = 0
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_epoch = epoch
            self.log(f"LRA epoch {epoch + 1}: {monitor} improved (train acc {train_accuracy:.4f}, val loss {val_loss:.4f}); "
                     f"best weights saved, lr stays {self.lr:.2e}")
            return False
        self.wait += 1
        if self.wait < self.patience:
            self.log(f"LRA epoch {epoch + 1}: {monitor} did not improve ({self.wait}/{self.patience}); lr stays {self.lr:.2e}")
            return False
        new_lr = self.lr * self.factor
        self._set_lr(new_lr)
        self.wait = 0
        self.reductions_without_improvement += 1
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        self.log(f"LRA epoch {epoch + 1}: {monitor} did not improve for {self.patience} epochs; lr lowered to {new_lr:.2e}, "
                 f"weights restored from epoch {self.best_epoch + 1} "
                 f"({self.reductions_without_improvement}/{self.stop_patience} reductions without improvement)")
        if self.reductions_without_improvement >= self.stop_patience:
            self.log(f"LRA epoch {epoch + 1}: early stop, no improvement after {self.stop_patience} reductions")
            return True
        return False

    def restore_best(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best_accuracy", "lowest_val_loss", "wait",
                                                "reductions_without_improvement", "best_state", "best_epoch")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_logger(out: Path) -> logging.Logger:
    logger = logging.getLogger(f"ml.train.{out}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler()):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logger


def prepare_split(config: TrainConfig, out: Path, log) -> list[mldata.Sample]:
    """The manifest's samples, making and saving a split first when none is given."""
    if config.manifest and Path(config.manifest).is_file():
        samples = mldata.read_manifest(config.manifest)
        log(f"split: reusing manifest {config.manifest}")
    else:
        scan = mldata.make_split(config.data, block_size=config.block_size, seed=config.seed, classes=config.classes)
        for relative, reason in scan.errors:
            log(f"skipped unreadable file {relative}: {reason}")
        target = Path(config.manifest) if config.manifest else out / "manifest.csv"
        mldata.write_manifest(scan, target)
        config.manifest = str(target)
        samples = scan.samples
        log(f"split: new manifest {target}")
    problems = mldata.check_manifest(samples, config.data)
    if problems:
        raise ValueError("the split manifest is not usable: " + "; ".join(problems[:5]))
    return samples


def limit(samples: list[mldata.Sample], per_class: int | None, seed: int) -> list[mldata.Sample]:
    if not per_class:
        return samples
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    return [s for label in sorted(by_class) for s in rng.sample(by_class[label], min(per_class, len(by_class[label])))]


class IndexedSubset(torch.utils.data.Dataset):
    """A subset whose items also carry their index into the full training set (for soft targets)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        x, y = self.dataset[index]
        return x, y, index


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x))
        labels.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(labels)


TEMPERATURE_BOUNDS = (0.25, 4.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, log=None) -> float:
    """Temperature scaling (Guo et al. 2017): one scalar that minimises validation NLL.

    Searched within TEMPERATURE_BOUNDS: on a validation split with (almost) no errors the NLL keeps
    falling as T -> 0, which would make every probability 0 or 1 and leave the portal's low-confidence
    flags meaningless; a bound keeps the probabilities informative, and hitting it is logged.
    """
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    lo, hi = TEMPERATURE_BOUNDS
    if not lo <= fitted <= hi and log is not None:
        log(f"temperature: NLL optimum {fitted:.3g} lies outside [{lo}, {hi}] (validation too clean to calibrate "
            f"further); using {min(max(fitted, lo), hi)}")
    return min(max(fitted, lo), hi)


def hardware() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train one model; returns the path of the deployable ``model.pt``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    logger = make_logger(out)
    log = logger.info
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)

    samples = prepare_split(config, out, log)
    classes = config.classes or mldata.manifest_classes(samples)
    config.classes = classes
    train_samples = limit([s for s in samples if s.split in config.train_splits], config.limit_per_class, config.seed)
    val_samples = limit([s for s in samples if s.split in config.val_splits], config.limit_per_class, config.seed)
    if not train_samples or (config.val_splits and not val_samples):
        raise ValueError(f"the split has no training ({config.train_splits}) or no validation ({config.val_splits}) images")
    if not val_samples:
        config.threshold = float("inf")  # nothing to validate on: the LRA watches training accuracy throughout
        log("no validation split: fixed epochs, LRA on training accuracy, temperature 1")

    augment = mldata.training_augmentation(config.img_size, config.augment_strength, stain=config.stain_augment,
                                           stain_strength=config.stain_strength, illumination=config.illumination,
                                           blur_prob=config.blur_prob, blur_sigma=config.blur_sigma,
                                           rgb_gain=config.rgb_gain, crop_prob=config.crop_prob,
                                           crop_scale=config.crop_scale, jpeg_prob=config.jpeg_prob,
                                           downscale_prob=config.downscale_prob, affine_fill=config.affine_fill,
                                           scale_jitter=config.scale_jitter)
    train_set = mldata.ImageTensorDataset(config.data, train_samples, classes, config.img_size, augment, config.progress,
                                          input_norm=config.input_norm, framing=config.framing)
    val_set = mldata.ImageTensorDataset(config.data, val_samples, classes, config.img_size, None, config.progress,
                                        input_norm=config.input_norm, framing=config.framing)
    val_loader = DataLoader(val_set, batch_size=64, shuffle=False, num_workers=config.num_workers)
    log(f"data: {len(train_set)} train / {len(val_set)} val images, classes {classes}, balance={config.balance}")

    soft_targets = teacher_soft_targets(config, train_set, classes, log) if config.teacher else None
    model = models.create(config.arch, num_classes=len(classes), pretrained_weights=config.pretrained_weights,
                          input_size=config.img_size)
    if config.init_weights:
        from .checkpoint import float_state_dict, model_summary, read_payload

        init = read_payload(config.init_weights)
        if init["arch"] != config.arch or init["training"].get("manifest_sha256") != mldata.sha256_file(Path(config.manifest)):
            raise ValueError("--init-weights must be a model of the same architecture trained on the same split")
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in float_state_dict(init).items() if k in own})
        # Recorded now: the file may later be overwritten (shipping replaces ml/weights/NAME.pt).
        config.extra.setdefault("ancestors", {})["init_weights"] = model_summary(init)
        log(f"initialised from {config.init_weights} ({init['model_version']})")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weight = None
    if config.balance == "weight":
        weight = torch.tensor(mldata.class_weights(train_set.labels, len(classes)), dtype=torch.float32)
        log("class weights " + ", ".join(f"{c} {w:.3f}" for c, w in zip(classes, weight.tolist())))
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    adjuster = LearningRateAdjuster(optimizer, config.threshold, config.factor, config.patience,
                                    config.stop_patience, log=log)
    ema = None
    if config.ema_decay > 0:
        from timm.utils.model_ema import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.ema_decay)
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    checkpoint_path = out / "last.pt"
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["config"]["arch"] != config.arch:
            raise ValueError(f"{checkpoint_path} is a {state['config']['arch']} run, not {config.arch}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        adjuster.load_state_dict(state["adjuster"])
        if ema is not None:  # a checkpoint of a run without the average starts it from the weights resumed
            ema.module.load_state_dict(state.get("ema") or state["model"])
        history, start_epoch, elapsed = state["history"], state["epoch"] + 1, state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        log(f"resumed from {checkpoint_path} at epoch {start_epoch}")
    elif resume:
        log(f"--resume: no checkpoint at {checkpoint_path}, starting fresh")

    stop = bool(history) and history[-1].get("stop", False)
    for epoch in range(start_epoch, config.epochs):
        if stop:
            break
        tick = time.perf_counter()
        order = mldata.balanced_indices(train_set.labels, config.balance, seed=config.seed * 1000 + epoch)
        loader = DataLoader(IndexedSubset(train_set, order), batch_size=config.batch_size, shuffle=False,
                            num_workers=config.num_workers, drop_last=len(order) > config.batch_size)
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        iterator = loader
        if config.progress:
            from tqdm import tqdm

            iterator = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for x, y, index in iterator:
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = criterion(logits, y)
            if soft_targets is not None:
                loss = (1 - config.distill_alpha) * loss + config.distill_alpha * distillation_loss(
                    logits, soft_targets[index], config.distill_temperature)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        train_loss, train_acc = loss_sum / seen, correct / seen
        val_loss, val_acc = float("nan"), float("nan")
        if len(val_set):
            val_logits, val_labels = collect_logits(model, val_loader)
            val_loss = float(nn.functional.cross_entropy(val_logits, val_labels))
            val_acc = float((val_logits.argmax(1) == val_labels).float().mean())
        ema_note = ""
        if ema is not None and len(val_set):
            ema_logits, _ = collect_logits(ema.module, val_loader)
            ema_loss = float(nn.functional.cross_entropy(ema_logits, val_labels))
            ema_acc = float((ema_logits.argmax(1) == val_labels).float().mean())
            ema_note = f" | EMA val loss {ema_loss:.4f} acc {ema_acc:.4f}"
        elapsed += time.perf_counter() - tick
        record = {"epoch": epoch, "lr": adjuster.lr, "train_loss": train_loss, "train_acc": train_acc,
                  "val_loss": val_loss, "val_acc": val_acc, "elapsed_s": elapsed}
        if ema_note:
            record.update(ema_val_loss=ema_loss, ema_val_acc=ema_acc)
        log(f"epoch {epoch + 1}/{config.epochs} lr {adjuster.lr:.2e} train loss {train_loss:.4f} acc {train_acc:.4f} "
            f"| val loss {val_loss:.4f} acc {val_acc:.4f}{ema_note} | {elapsed / 60:.1f} min")
        stop = adjuster.step(epoch, model, train_acc, val_loss) and epoch + 1 >= config.min_epochs
        record["stop"] = stop
        history.append(record)
        torch.save({"config": asdict(config), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "adjuster": adjuster.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                    "history": history, "epoch": epoch, "elapsed": elapsed,
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}},
                   checkpoint_path.with_suffix(".tmp"))
        os.replace(checkpoint_path.with_suffix(".tmp"), checkpoint_path)  # atomic: a kill never leaves half a file

    shipped_epoch = adjuster.best_epoch
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())  # the averaged weights are the model
        shipped_epoch = len(history) - 1  # the average as it stood after the last epoch
        log("shipping the EMA weights (the average after the last epoch)")
    else:
        adjuster.restore_best(model)
    temperature = fit_temperature(*collect_logits(model, val_loader), log=log) if len(val_set) else 1.0
    log(f"training done in {elapsed / 60:.1f} min; shipped epoch {shipped_epoch}; temperature {temperature:.3f}")
    return save_model(out / "model.pt", model, config, classes, temperature, history, elapsed, shipped_epoch)


def export(run_dir: str | Path) -> Path:
    """Turn a run's ``last.pt`` (finished or not) into ``model.pt`` with its best weights so far (its averaged
    weights for an EMA run), temperature fitted on the validation split."""
    run_dir = Path(run_dir)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    config = TrainConfig(**state["config"])
    model = models.create(config.arch, num_classes=len(config.classes), input_size=config.img_size)
    best = state.get("ema") or state["adjuster"].get("best_state") or state["model"]
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in best.items() if k in own})
    samples = mldata.read_manifest(config.manifest)
    val = mldata.ImageTensorDataset(config.data, [s for s in samples if s.split in config.val_splits], config.classes,
                                    config.img_size, input_norm=config.input_norm, framing=config.framing)
    temperature = fit_temperature(*collect_logits(model, DataLoader(val, batch_size=64)), log=print)
    return save_model(run_dir / "model.pt", model, config, config.classes, temperature, state["history"],
                      state["elapsed"], state["adjuster"].get("best_epoch", -1))
