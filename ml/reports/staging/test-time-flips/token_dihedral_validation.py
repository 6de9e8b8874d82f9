"""Session 13, validation split only (`PYTHONPATH=. python ml/reports/staging/test-time-flips/token_dihedral_validation.py`):
the shipped model's weights (B) with its 7x7 token grid read in more orders before the GRU head: the identity, the
left-right mirror (shipped), the up-down mirror, both mirrors, and all 8 flips/transposes of the grid (one backbone
pass; the head once per order, summaries averaged). Argmax errors, clean + the 38 changes; head cost per order."""
import time

import numpy as np
import torch

from ml import perturb
from ml.models import unwrapped
from ml.predict import Predictor
from ml.robustness import load_split

p = Predictor("ml/weights/staging.pt")
m = unwrapped(p.model)
images, labels, _ = load_split(p, "../shared/data/taleqani-all", None, "val", None)
labels = np.asarray(labels)
ORDERS = {
    "id": lambda f: f, "lr": lambda f: torch.flip(f, dims=[3]), "ud": lambda f: torch.flip(f, dims=[2]),
    "lrud": lambda f: torch.flip(f, dims=[2, 3]), "t": lambda f: f.transpose(2, 3),
    "t_lr": lambda f: torch.flip(f.transpose(2, 3), dims=[3]), "t_ud": lambda f: torch.flip(f.transpose(2, 3), dims=[2]),
    "t_lrud": lambda f: torch.flip(f.transpose(2, 3), dims=[2, 3]),
}
VARIANTS = {"plain": ["id"], "lr (shipped)": ["id", "lr"], "ud": ["id", "ud"], "lr+ud+lrud": ["id", "lr", "ud", "lrud"],
            "all 8": list(ORDERS)}


def summaries(batch):
    with torch.inference_mode():
        fmap = m.features(batch)
        return {k: m.sequence(m.project(o(fmap).flatten(2).transpose(1, 2))) for k, o in ORDERS.items()}


sets = [("clean", None)] + [(q.name, q) for q in perturb.select("all")]
errors = {v: 0 for v in VARIANTS}
clean = {}
t0 = time.time()
for name, q in sets:
    changed = images if q is None else [q(im) for im in images]
    logits = {v: [] for v in VARIANTS}
    for s in range(0, len(changed), 64):
        x = torch.stack([p.prepare(im)[0] for im in changed[s:s + 64]])
        summ = summaries(x)
        for v, orders in VARIANTS.items():
            with torch.inference_mode():
                logits[v].append(m.classifier(sum(summ[o] for o in orders) / len(orders)).numpy())
    row = {v: int((np.concatenate(logits[v]).argmax(1) != labels).sum()) for v in VARIANTS}
    for v in VARIANTS:
        errors[v] += row[v]
    if name == "clean":
        clean = row
    print(f"{name:28s} " + "  ".join(f"{v} {e:3d}" for v, e in row.items()) + f"  ({time.time() - t0:.0f} s)", flush=True)
print("clean", clean)
print("all", errors, "n", len(images) * len(sets))
x = torch.stack([p.prepare(images[0])[0]])


def median_ms(fn, n=40):
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        a = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - a) * 1000)
    return float(np.median(ts))


torch.set_num_threads(2)
with torch.inference_mode():
    fmap = m.features(x)
    print(f"forward ms (2 threads, median of 40): backbone {median_ms(lambda: m.features(x)):.1f}, one head pass "
          f"{median_ms(lambda: m.sequence(m.project(fmap.flatten(2).transpose(1, 2)))):.2f}")
