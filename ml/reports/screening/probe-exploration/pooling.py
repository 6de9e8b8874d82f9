"""Section 12 of README.md: the probe on other poolings of the same last feature map, both protocols.

Needs the Lite0 run of larger_backbones.py first (its stored float16 backbone and mean-pooled features):
    PYTHONPATH=. python ml/reports/screening/probe-exploration/larger_backbones.py lite0 224
    PYTHONPATH=. python ml/reports/screening/probe-exploration/pooling.py
One forward pass per cell through Predictor (per-cell standardisation, 224 px) with a hook on the model's
``feature_tap`` (the last feature map, B x 1280 x 7 x 7); the probe, C grid and transfer-checked cut are
``screening_probe.choose_c``'s. The estimate manifest's test subjects are not scored."""
import json
import time
from pathlib import Path

import numpy as np
import torch

from ml import screening
from ml import screening_probe as sp
from ml.predict import Predictor

DATA = "../shared/data/cnmc-fold1"
ALL, EST = "ml/splits/cnmc-fold1-all-k4.csv", "ml/splits/cnmc-fold1-k4.csv"
RUN = Path("runs/probe-backbones/lite0-224")
HERE = Path(__file__).parent
STATISTICS = ("mean", "std", "gem3", "max")


def pooled_statistics(fmap: torch.Tensor) -> dict[str, np.ndarray]:
    flat = fmap.float().flatten(2)  # (B, C, H*W); ReLU6 activations, so every value is >= 0
    return {"mean": flat.mean(2).numpy(), "std": flat.std(2).numpy(),
            "gem3": flat.clamp(min=1e-6).pow(3).mean(2).pow(1 / 3).numpy(), "max": flat.amax(2).numpy()}


def feature_statistics(paths: list[str]) -> dict[str, np.ndarray]:
    cache = RUN / "pooling_features.npz"
    if cache.exists():
        return dict(np.load(cache))
    predictor = Predictor(RUN / "model.pt", with_domain=False)
    tap = dict(predictor.model.named_modules())[next(n for n, _ in predictor.model.named_modules()
                                                     if n.endswith("feature_tap"))]
    batches = []
    handle = tap.register_forward_hook(lambda module, inputs, output: batches.append(pooled_statistics(output)))
    started = time.perf_counter()
    predictor.predict_outputs([Path(DATA) / p for p in paths], 32)
    handle.remove()
    stats = {k: np.concatenate([b[k] for b in batches]) for k in STATISTICS}
    np.savez(cache, **stats)
    print("features", round(time.perf_counter() - started, 1), "s", flush=True)
    return stats


def main():
    z = np.load(RUN / "features.npz")
    paths = list(z["paths"])
    stats = feature_statistics(paths)
    gap = float(np.abs(stats["mean"] - z["f"]).max())
    if gap > 1e-3:
        raise SystemExit(f"the hooked mean differs from the stored features by {gap}: not the same forward pass")
    variants = {
        "mean (shipped)": stats["mean"],
        "GeM, p = 3": stats["gem3"],
        "max": stats["max"],
        "mean + std": np.hstack([stats["mean"], stats["std"]]),
        "mean + max": np.hstack([stats["mean"], stats["max"]]),
    }
    samples = {s.path: s for s in screening.load_subject_manifest(DATA, ALL, 0)}
    fold = [samples[p] for p in paths]
    is_blast = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in fold])
    subjects = np.array([screening.subject_of(p) for p in paths])
    est = {s.path: s.split for s in screening.load_subject_manifest(DATA, EST, 0)}
    dev = np.array([est[p].startswith("fold") for p in paths])
    protocols = {"dev": (dev, np.array([est[p] for p in paths])),
                 "all": (np.ones(len(paths), bool), np.array([s.split for s in fold]))}
    result = {"hooked mean vs stored features, max abs difference": gap}
    for name, features in variants.items():
        result[name] = {}
        for protocol, (keep, folds) in protocols.items():
            started = time.perf_counter()
            c, _, best = sp.choose_c(features[keep].astype(np.float64), is_blast[keep], subjects[keep], folds[keep])
            p, cut = best["p"], best["threshold"]
            normal = {h: round(float((p[subjects[keep] == h] < cut).mean()), 3)
                      for h in sorted(set(subjects[keep][~is_blast[keep]]))}
            result[name][protocol] = {"C": c, **{k: round(best["metrics"][k], 4)
                                                 for k in ("sensitivity", "specificity", "roc_auc")},
                                      "normal": normal, "seconds": round(time.perf_counter() - started, 1)}
            print(name, protocol, json.dumps(result[name][protocol]), flush=True)
    (HERE / "pooling.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
