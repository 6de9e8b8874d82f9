"""Learning from review: the agreement between the models and the
pathologists, and the export of reviewed smears as training folders."""
from ..models import IMAGE_FORMAT_FILES, CellLabel, Smear, Stage
from .text import safe_name_part


def reviewed_smears():
    """Smears with a pathologist label in signed-out cases (the labels that
    are final), with their predictions."""
    return (
        Smear.objects.filter(case__signed_out_at__isnull=False, status=Smear.Status.DONE, not_assessable=False)
        .exclude(review_label="")
        .filter(prediction__isnull=False)
        .select_related("prediction", "case", "reviewed_by")
        .order_by("case__signed_out_at", "pk")
    )


def agreement_stats(smears=None, kind=None):
    """Agreement between the model and the pathologists on reviewed smears,
    and the confusion matrix (rows: model label, columns: final label).
    `kind` (Smear.Kind) keeps one model's smears only; the dashboard shows
    one matrix per model kind."""
    smears = list(reviewed_smears() if smears is None else smears)
    if kind is not None:
        smears = [s for s in smears if s.kind == kind]
    # The model made no suggestion for an image outside its domain: nothing to agree or disagree with.
    outside = sum(1 for s in smears if not s.prediction.in_domain)
    smears = [s for s in smears if s.prediction.in_domain]
    labels = []
    for smear in smears:
        labels += [label for label in smear.prediction.labels if label not in labels]
    matrix = {m: {f: 0 for f in labels} for m in labels}
    agree = 0
    for smear in smears:
        matrix[smear.prediction.label][smear.review_label] = matrix[smear.prediction.label].get(smear.review_label, 0) + 1
        agree += smear.prediction.label == smear.review_label
    return {
        "n": len(smears),
        "agree": agree,
        "agreement": agree / len(smears) if smears else None,
        "outside_domain": outside,
        "labels": labels,
        "matrix": [(m, [matrix[m].get(f, 0) for f in labels]) for m in labels],
    }


def agreement_by_kind(smears=None):
    """agreement_stats() per model kind: [(kind, kind display, stats)]."""
    smears = list(reviewed_smears() if smears is None else smears)
    return [(kind.value, kind.label, agreement_stats(smears, kind)) for kind in Smear.Kind]


EXPORT_CSV = "labels.csv"


EXPORT_COLUMNS = ["file", "final_label", "model_label", "model_in_domain", "model_version", "reviewer", "case_accession",
                  "sha256"]


#: Export subfolder and class folders (always created) per smear kind.
EXPORT_LAYOUT = {
    Smear.Kind.FIELD: ("staging", tuple(Stage.values)),
    Smear.Kind.CELL: ("screening", tuple(CellLabel.values)),
}


def _inside(folder, relative):
    """folder/relative, refused unless it resolves inside folder."""
    from pathlib import Path

    folder = Path(folder).resolve()
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(f"Refusing to write {relative!r} outside the export folder.")
    return target


def export_reviewed(dest, smears=None):
    """Write every reviewed smear of signed-out cases (confirmed or changed by
    the pathologist) into DEST/staging/<final stage>/ (blood-smear fields) and
    DEST/screening/<blast|normal>/ (single cells), each subfolder with its
    own labels.csv and directly usable as `python -m ml train --data
    DEST/staging` (or DEST/screening). DEST must be empty or absent.
    Returns the number of images written."""
    import csv
    from pathlib import Path

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; export into a new folder.")
    dest.mkdir(parents=True, exist_ok=True)
    smears = list(reviewed_smears() if smears is None else smears)
    rows = {kind: [] for kind in EXPORT_LAYOUT}
    for sub, labels in EXPORT_LAYOUT.values():
        for label in labels:  # the model's classes always exist, even when empty
            (dest / sub / label).mkdir(parents=True, exist_ok=True)
    for smear in smears:
        sub, labels = EXPORT_LAYOUT[smear.kind]
        if smear.review_label not in labels:  # never a path component that is not a known class
            raise ValueError(f"Smear {smear.pk} has the unknown label {smear.review_label!r}; not exported.")
        suffix = IMAGE_FORMAT_FILES.get(smear.image_format, (".img",))[0]
        relative = f"{smear.review_label}/{safe_name_part(smear.case.accession_number)}-{smear.pk}{suffix}"
        target = _inside(dest / sub, relative)
        with smear.image.open("rb") as src, open(target, "xb") as out:
            for chunk in src.chunks():
                out.write(chunk)
        rows[smear.kind].append(
            [
                relative, smear.review_label, smear.prediction.label, int(smear.prediction.in_domain),
                f"{smear.prediction.model_name} {smear.prediction.model_version}".strip(),
                smear.reviewed_by.email if smear.reviewed_by else "", smear.case.accession_number, smear.sha256,
            ]
        )
    for kind, (sub, _) in EXPORT_LAYOUT.items():
        with open(dest / sub / EXPORT_CSV, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(EXPORT_COLUMNS)
            writer.writerows(rows[kind])
    return sum(len(r) for r in rows.values())
