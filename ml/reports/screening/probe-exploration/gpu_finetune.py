"""#12 exploration on the lent GPU (session 13; section 8 of README.md): does fine-tuning at 224 px beat the frozen-feature probe on new subjects?

Subject-grouped 4-fold CV on all 14 subjects (ml/splits/cnmc-fold1-all-k4.csv), the same folds as the shipped
probe's OOF numbers. Cells are carried as 224 px JPEG q95 of ``resized_rgb`` (the serving resize), so every
variant, the probe baseline included, is scored on the same carried pixels. Per variant: pooled OOF ROC AUC,
the cut keeping pooled OOF sensitivity 0.97, specificity there, per normal subject.

From the repository root: ``python ml/reports/screening/probe-exploration/gpu_finetune.py --prepare
../shared/data/cnmc-fold1`` writes the cells; then, on the GPU machine with ``.gpu`` carried, run 1 was
``--budget-s 450 --variants lpft:1e-4:0 ft:3e-4:0 lpft:1e-4:1 ft:3e-4:1 lpft:3e-5:0 lpft:3e-4:0 ft:1e-4:0`` and
run 2 ``--budget-s 400 --variants lpft:3e-4:1 lpft:3e-4:2 lpft:3e-4:3 lpft:1e-3:0 lpft:1e-3:1`` (``--out $OUT``).
A variant is KIND:LR:SEED, KIND "lpft" (the fold's probe as the starting head, ImageNet BN statistics kept) or
"ft" (a new head at 10x the learning rate, BN trained); 10 epochs of subject-balanced sampling, batch 128.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path.cwd()))  # run from the repository root
from ml import models, screening  # noqa: E402
from ml.checkpoint import float_state_dict, read_payload  # noqa: E402
from ml.data import standardise_per_image  # noqa: E402
from ml.screening_probe import fit_probe, probe_probability, subject_balanced_weights  # noqa: E402

MANIFEST = Path("ml/splits/cnmc-fold1-all-k4.csv")
CELLS = Path(".gpu/cells")  # an ignored folder that travels to the GPU machine (`carry`)


def prepare(data: str) -> None:
    """Write every manifest cell as the serving resize (``resized_rgb``, 224 px) in JPEG q95 under CELLS:
    14.9 MiB for the 3,581 cells, small enough to travel beside the working tree (64 MiB in all)."""
    from ml.runtime.preprocess import resized_rgb

    for r in csv.DictReader(open(MANIFEST)):
        out = CELLS / (r["path"][:-4] + ".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(resized_rgb(Path(data) / r["path"], 224)).save(out, "JPEG", quality=95)


def load_cells(limit: int | None):
    rows = list(csv.DictReader(open(MANIFEST)))
    if limit:
        rows = rows[::max(1, len(rows) // limit)]
    images = np.stack([np.asarray(Image.open(CELLS / (r["path"][:-4] + ".jpg")).convert("RGB")) for r in rows])
    subjects = np.array([screening.subject_of(r["path"]) for r in rows])
    is_blast = np.array([r["label"] == "all" for r in rows])
    folds = np.array([r["split"] for r in rows])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), subjects, is_blast, folds


def new_model(device):
    model = models.create("efficientnet_lite0_probe", num_classes=2, pretrained_weights=None, input_size=224)
    backbone = {k: v for k, v in float_state_dict(read_payload("ml/weights/screening.pt")).items()
                if k.startswith("backbone.")}
    missing = model.load_state_dict(backbone, strict=False)
    assert all(not k.startswith("backbone.") for k in missing.missing_keys), missing
    return model.to(device).to(memory_format=torch.channels_last)


@torch.no_grad()
def features_and_p(model, images, device, batch=256):
    model.eval()
    feats, probs = [], []
    for i in range(0, len(images), batch):
        x = standardise_per_image(images[i:i + batch].to(device)).contiguous(memory_format=torch.channels_last)
        logits, emb = model.forward_with_embedding(x)
        feats.append(emb.float().cpu())
        probs.append(torch.softmax(logits.float(), 1)[:, 1].cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def augment(x: torch.Tensor, gen: torch.Generator, blur_p=0.2, gamma=0.2, scale=0.1, shift=0.05):
    """float (B,3,H,W) in 0..255 -> rotated (any angle), mirrored, scaled, shifted, gamma-changed, sometimes blurred."""
    b, device = x.shape[0], x.device
    u = lambda *s: torch.rand(*s, generator=gen, device=device)  # noqa: E731
    angle = u(b) * 2 * math.pi
    s = 1 + (u(b) * 2 - 1) * scale
    flip = torch.where(u(b) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos * flip, -sin, (u(b) * 2 - 1) * shift], 1),
                         torch.stack([sin * flip, cos, (u(b) * 2 - 1) * shift], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = torch.exp((u(b, 3, 1, 1) * 2 - 1) * gamma)
    x = 255.0 * (x.clamp(0, 255) / 255.0) ** g
    if blur_p > 0:
        pick = u(b) < blur_p
        if pick.any():
            import torchvision.transforms.functional as TF
            sigma = float(0.5 + u(1) * 1.0)
            x[pick] = TF.gaussian_blur(x[pick], kernel_size=7, sigma=sigma)
    return x


def train_variant(kind, images, y, weights, init_wb, device, epochs, lr, seed, batch=128, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = new_model(device)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        if init_wb is not None:  # LP-FT: start from the fold's probe (logit(blast) - logit(normal) = w.x + b)
            w, b = init_wb
            model.classifier.weight[1] = torch.as_tensor(w, dtype=torch.float32, device=device)
            model.classifier.bias[1] = float(b)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    head_lr = lr if kind == "lpft" else lr * 10
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.05)
    steps = epochs * max(1, len(y) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, head_lr], total_steps=steps, pct_start=0.1)
    sampling = torch.as_tensor(weights, dtype=torch.float32, device=device)
    images, y = images.to(device), torch.as_tensor(y, dtype=torch.long, device=device)
    model.train()
    if kind == "lpft":  # keep ImageNet BN statistics: the probe was fitted on features computed with them
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    tick = time.time()
    for step in range(steps):
        idx = torch.multinomial(sampling, batch, replacement=True, generator=gen)
        x = augment(images[idx].float(), gen)
        x = standardise_per_image(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    log(f"    trained {kind} {steps} steps in {time.time() - tick:.1f} s, last loss {float(loss):.3f}")
    return model


def summarise(p, is_blast, subjects, target=0.97):
    cut = screening.choose_threshold(p, is_blast, target)
    m = screening.screening_metrics(p, is_blast, cut)
    per = {s: float((p[(subjects == s)] < cut).mean()) for s in sorted(set(subjects[~is_blast]))}
    return {"auc": m["roc_auc"], "cut": cut, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "weighted_f1": m["weighted_f1"], "normal_subjects": per}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=500)
    ap.add_argument("--variants", nargs="+", default=["lpft:1e-4:0", "ft:3e-4:0", "lpft:1e-4:1", "ft:3e-4:1", "lpft:3e-5:0"])
    ap.add_argument("--probe-c", type=float, default=3e-5)
    ap.add_argument("--prepare", metavar="CNMC_DIR", help="only write the carried cells from this data set")
    args = ap.parse_args()
    if args.prepare:
        return prepare(args.prepare)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}", torch.cuda.get_device_name() if device.type == "cuda" else "")
    images, subjects, is_blast, folds = load_cells(args.limit)
    print(f"{len(images)} cells, {len(set(subjects))} subjects, load {time.time() - start:.1f} s")
    oof = {}
    fold_names = sorted(set(folds))
    results = {"cells": int(len(images)), "folds": fold_names, "epochs": args.epochs, "variants": {}}
    base = new_model(device)
    feats, _ = features_and_p(base, images, device)
    del base
    for c in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3):
        p = np.zeros(len(images))
        for f in fold_names:
            tr, te = folds != f, folds == f
            w, b = fit_probe(feats[tr], is_blast[tr], subjects[tr], c)
            p[te] = probe_probability(feats[te], w, b)
        oof[f"probe:{c:g}"] = p
        results["variants"][f"probe:{c:g}"] = summarise(p, is_blast, subjects)
        print(f"probe C={c:g}: {results['variants'][f'probe:{c:g}']}")
    for spec in args.variants:
        kind, lr, seed = spec.split(":")
        if time.time() - start > args.budget_s:
            print(f"budget reached, skipping {spec}")
            continue
        p = np.zeros(len(images))
        for f in fold_names:
            tr, te = folds != f, folds == f
            w = subject_balanced_weights(subjects[tr], is_blast[tr])
            init = fit_probe(feats[tr], is_blast[tr], subjects[tr], args.probe_c) if kind == "lpft" else None
            model = train_variant(kind, images[torch.from_numpy(tr)], is_blast[tr].astype(int), w, init, device,
                                  args.epochs, float(lr), int(seed))
            _, p[te] = features_and_p(model, images[torch.from_numpy(te)], device)
            del model
        oof[spec] = p
        results["variants"][spec] = summarise(p, is_blast, subjects)
        print(f"{spec}: {results['variants'][spec]}  ({time.time() - start:.0f} s)", flush=True)
        json.dump(results, open(out / "results.json", "w"), indent=1)
        np.savez(out / "oof.npz", subjects=subjects, is_blast=is_blast, folds=folds, **{k.replace(":", "_"): v for k, v in oof.items()})
    # seed pairs averaged: a two-model ensemble per fold
    for kind_lr in sorted({s.rsplit(":", 1)[0] for s in oof if not s.startswith("probe")}):
        members = [v for k, v in oof.items() if k.rsplit(":", 1)[0] == kind_lr]
        if len(members) > 1:
            results["variants"][kind_lr + ":mean"] = summarise(np.mean(members, 0), is_blast, subjects)
            print(f"{kind_lr}:mean: {results['variants'][kind_lr + ':mean']}")
    json.dump(results, open(out / "results.json", "w"), indent=1)
    np.savez(out / "oof.npz", subjects=subjects, is_blast=is_blast, folds=folds, **{k.replace(":", "_"): v for k, v in oof.items()})
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
