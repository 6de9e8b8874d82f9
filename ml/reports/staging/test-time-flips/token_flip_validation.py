"""Session 12, validation split only (`PYTHONPATH=. python ml/reports/staging/test-time-flips/token_flip_validation.py`): B plain vs B with its 7x7 token grid mirrored before the GRU head (logits
averaged over the two token orders; one backbone pass). Argmax errors, clean + the 38 changes."""
import time, numpy as np, torch
from ml import perturb
from ml.predict import Predictor
from ml.robustness import load_split
p = Predictor("ml/weights/staging.pt")
m = p.model
images, labels, _ = load_split(p, "../shared/data/taleqani-all", None, "val", None)
labels = np.asarray(labels)
def both(batch):
    with torch.inference_mode():
        fmap = m.features(batch)
        outs = []
        for f in (fmap, torch.flip(fmap, dims=[3])):
            tokens = m.project(f.flatten(2).transpose(1, 2))
            outs.append(m.classifier(m.sequence(tokens)))
        return outs[0].numpy(), ((outs[0] + outs[1]) / 2).numpy()
sets = [("clean", None)] + [(q.name, q) for q in perturb.select("all")]
err = {"plain": 0, "tokenflip": 0}; clean = {}
t0 = time.time()
for name, q in sets:
    batch_imgs = images if q is None else [q(im) for im in images]
    plain, tf = [], []
    for s in range(0, len(batch_imgs), 64):
        x = torch.stack([p.prepare(im)[0] for im in batch_imgs[s:s + 64]])
        a, b = both(x); plain.append(a); tf.append(b)
    plain, tf = np.concatenate(plain), np.concatenate(tf)
    e1, e2 = int((plain.argmax(1) != labels).sum()), int((tf.argmax(1) != labels).sum())
    err["plain"] += e1; err["tokenflip"] += e2
    if name == "clean": clean = {"plain": e1, "tokenflip": e2}
    print(f"{name:28s} plain {e1:3d} tokenflip {e2:3d}  ({time.time()-t0:.0f} s)", flush=True)
print("clean", clean, "all", err, "n", len(images) * len(sets))
x = torch.stack([p.prepare(images[0])[0]])
def t(fn, n=40):
    for _ in range(5): fn()
    ts = []
    for _ in range(n):
        a = time.perf_counter(); fn(); ts.append((time.perf_counter() - a) * 1000)
    return float(np.median(ts))
with torch.inference_mode():
    print(f"forward ms: plain {t(lambda: m(x)):.1f}, token flip {t(lambda: both(x)):.1f}")
