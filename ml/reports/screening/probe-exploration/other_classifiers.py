"""Section 11 of README.md: other classifiers than the L2 logistic regression on the shipped probe's features.

The same features as the shipped probe (ImageNet EfficientNet-Lite0 head, 224 px, per-cell standardisation, the
stored float16 backbone through Predictor: `larger_backbones.py lite0 224` computes and caches them), the same
subject-balanced weights, folds and transfer-checked cut (`screening_probe`, `screening`); only the classifier that
turns 1280 features into a score changes. Each classifier's one setting is chosen, as C is for the probe, by OOF
specificity on the protocol's own folds. The estimate manifest's test subjects are not scored. Run from the
repository root after the features exist:
    PYTHONPATH=. python ml/reports/screening/probe-exploration/other_classifiers.py"""
import json
import time
from pathlib import Path

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ml import screening
from ml import screening_probe as sp

DATA = "../shared/data/cnmc-fold1"
ALL, EST = "ml/splits/cnmc-fold1-all-k4.csv", "ml/splits/cnmc-fold1-k4.csv"
FEATURES = Path("runs/probe-backbones/lite0-224/features.npz")
HERE = Path(__file__).parent


def standardised(train, held):
    scaler = StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(held)


def logistic(c):
    def score(x, y, subjects, held):
        w, b = sp.fit_probe(x, y, subjects, c)
        return sp.probe_probability(held, w, b)
    return score


def lda(shrinkage):
    # Linear too, but a different estimate of the direction: class means and one shrunk shared covariance.
    def score(x, y, subjects, held):
        x, held = standardised(x, held)
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(x, y)
        return model.decision_function(held)
    return score


def rbf_svm(c):
    # Non-linear: a blast may sit in several pockets of feature space that no one direction separates.
    def score(x, y, subjects, held):
        x, held = standardised(x, held)
        model = SVC(C=c, kernel="rbf", gamma="scale")
        model.fit(x, y, sample_weight=sp.subject_balanced_weights(subjects, y))
        return model.decision_function(held)
    return score


def knn(k):
    # Local: the share of blasts among a cell's k nearest training cells (cosine distance), subjects not weighted.
    def score(x, y, subjects, held):
        x, held = standardised(x, held)
        model = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(x, y)
        return model.predict_proba(held)[:, 1]
    return score


CLASSIFIERS = {
    "L2 logistic regression (shipped)": [(f"C {c:g}", logistic(c)) for c in sp.C_GRID],
    "LDA, shared covariance shrunk": [(f"shrinkage {s:g}", lda(s)) for s in (0.3, 0.6, 0.9)],
    "RBF SVM, subject-balanced weights": [(f"C {c:g}", rbf_svm(c)) for c in (0.1, 1.0, 10.0)],
    "k nearest neighbours (cosine)": [(f"k {k}", knn(k)) for k in (15, 50, 150)],
}


def evaluate(score, features, is_blast, subjects, folds):
    """OOF scores and the transfer-checked cut, as ``screening_probe.choose_c`` makes them for one C."""
    p, fold_data = sp.oof_scores(score, features, is_blast, subjects, folds)
    _, _, cut, metrics = sp.oof_cut(p, is_blast, fold_data)
    normal = {h: round(float((p[subjects == h] < cut).mean()), 3) for h in sorted(set(subjects[~is_blast]))}
    return {**{k: round(metrics[k], 4) for k in ("sensitivity", "specificity", "roc_auc")}, "normal": normal}


def main():
    samples = [s for s in screening.load_subject_manifest(DATA, ALL, 0) if s.split.startswith("fold")]
    z = np.load(FEATURES)
    features, paths = z["f"].astype(np.float64), list(z["paths"])
    if paths != [s.path for s in samples]:
        raise SystemExit(f"{FEATURES} was computed for other cells: run larger_backbones.py lite0 224 again")
    is_blast = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in samples])
    subjects = np.array([screening.subject_of(s.path) for s in samples])
    est = {s.path: s.split for s in screening.load_subject_manifest(DATA, EST, 0)}
    dev = np.array([est[p].startswith("fold") for p in paths])
    protocols = {
        "dev": (features[dev], is_blast[dev], subjects[dev], np.array([est[p] for p in np.array(paths)[dev]])),
        "all": (features, is_blast, subjects, np.array([s.split for s in samples])),
    }
    result = {}
    for name, settings in CLASSIFIERS.items():
        result[name] = {}
        for protocol, args in protocols.items():
            started = time.perf_counter()
            rows = {setting: evaluate(score, *args) for setting, score in settings}
            best = max(rows, key=lambda s: rows[s]["specificity"])  # ties: the first (simplest) setting
            result[name][protocol] = {"best": best, **rows[best], "every_setting": rows,
                                      "seconds": round(time.perf_counter() - started, 1)}
            print(name, protocol, best, json.dumps(rows[best]), flush=True)
    (HERE / "other_classifiers.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
