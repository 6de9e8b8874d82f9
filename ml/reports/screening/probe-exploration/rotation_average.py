"""Section 10 of README.md: the probe on features averaged over the four 90-degree rotations of each cell.

Needs the Lite0 run of larger_backbones.py first (its stored float16 backbone and unrotated features):
    PYTHONPATH=. python ml/reports/screening/probe-exploration/larger_backbones.py lite0 224
    PYTHONPATH=. python ml/reports/screening/probe-exploration/rotation_average.py
The estimate manifest's test subjects are not scored."""
import json, time
from pathlib import Path
import numpy as np
from ml import screening, screening_probe as sp
from ml.data import load_image
from ml.predict import Predictor

DATA = "../shared/data/cnmc-fold1"
ALL, EST = "ml/splits/cnmc-fold1-all-k4.csv", "ml/splits/cnmc-fold1-k4.csv"
out = Path("runs/probe-backbones/lite0-224")
z = np.load(out / "features.npz"); f0, paths = z["f"], list(z["paths"])
predictor = Predictor(out / "model.pt", with_domain=False)
feats = [f0]
for k in (1, 2, 3):
    cache = out / f"features_rot{k}.npz"
    if not cache.exists():
        t = time.perf_counter()
        fk = []
        for start in range(0, len(paths), 64):
            batch = [load_image(Path(DATA) / p).rotate(90 * k, expand=True) for p in paths[start:start + 64]]
            fk.append(predictor.predict_outputs(batch, 64)[1])
        np.savez(cache, f=np.concatenate(fk))
        print("rotation", k, round(time.perf_counter() - t, 1), "s", flush=True)
    feats.append(np.load(cache)["f"])
f = np.mean(feats, axis=0)
samples = {s.path: s for s in screening.load_subject_manifest(DATA, ALL, 0)}
fold = [samples[p] for p in paths]
is_blast = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in fold])
subjects = np.array([screening.subject_of(s.path) for s in fold])
res = {}
def per(best, subj):
    cut, p = best["threshold"], best["p"]
    return {h: round(float((p[subj == h] < cut).mean()), 3) for h in ("H10", "H14", "H22") if (subj == h).any()}
for name, feat in (("rot0", f0), ("c4", f)):
    c, rows, best = sp.choose_c(feat, is_blast, subjects, np.array([s.split for s in fold]))
    r = {"all": {"C": c, **{k: round(best["metrics"][k], 4) for k in ("sensitivity", "specificity", "roc_auc")}, "normal": per(best, subjects)}}
    est = {s.path: s.split for s in screening.load_subject_manifest(DATA, EST, 0)}
    keep = np.array([est[p].startswith("fold") for p in paths])
    c2, rows2, best2 = sp.choose_c(feat[keep], is_blast[keep], subjects[keep], np.array([est[p] for p in np.array(paths)[keep]]))
    r["dev"] = {"C": c2, **{k: round(best2["metrics"][k], 4) for k in ("sensitivity", "specificity", "roc_auc")}, "normal": per(best2, subjects[keep])}
    res[name] = r
    print(name, json.dumps(r), flush=True)
(out / "c4_result.json").write_text(json.dumps(res, indent=1))
