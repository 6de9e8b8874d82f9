"""The export of reviewed smears of signed-out cases as training folders
for `python -m ml train`."""
from ..models import IMAGE_FORMAT_FILES, CellLabel, Smear, Stage
from ..selectors import reviewed_smears
from .text import safe_name_part


EXPORT_CSV = "labels.csv"
EXPORT_COLUMNS = ["file", "final_label", "model_label", "model_in_domain", "model_version", "reviewer", "case_accession",
                  "sha256"]
#: Export subfolder and class folders (always created) per smear kind.
EXPORT_LAYOUT = {
    Smear.Kind.FIELD: ("staging", tuple(Stage.values)),
    Smear.Kind.CELL: ("screening", tuple(CellLabel.values)),
}


#: A spreadsheet reads a cell starting with one of these as a formula (CSV injection, OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A text cell that a spreadsheet shows as text: one starting like a formula gets a leading apostrophe
    (an e-mail address may start with "=", a model version comes from a worker)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


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
            writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows[kind])
    return sum(len(r) for r in rows.values())
