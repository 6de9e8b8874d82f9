"""The export of reviewed smears of signed-out cases as training folders
for `python -m ml train`: written to a folder (`manage.py export_reviewed`),
or zipped by a worker for download from the portal (ReviewedExport)."""
import csv
import io
import logging
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from ..models import IMAGE_FORMAT_FILES, CellLabel, ExportDownload, ReviewedExport, Smear, Stage
from ..selectors import reviewed_smears
from .dispatch import enqueue_export
from .errors import failure_words
from .files import create_private_file, make_private_dirs
from .text import safe_name_part

logger = logging.getLogger(__name__)


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
    folder = Path(folder).resolve()
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(f"Refusing to write {relative!r} outside the export folder.")
    return target


def _export_entries(smears):
    """(kind, path relative to the kind's subfolder, smear, labels.csv row) for every smear to export.
    Only known class names become path components; the rest of the name is the safe accession and the pk."""
    for smear in smears:
        sub, labels = EXPORT_LAYOUT[smear.kind]
        if smear.review_label not in labels:  # never a path component that is not a known class
            raise ValueError(f"Smear {smear.pk} has the unknown label {smear.review_label!r}; not exported.")
        suffix = IMAGE_FORMAT_FILES.get(smear.image_format, (".img",))[0]
        relative = f"{smear.review_label}/{safe_name_part(smear.case.accession_number)}-{smear.pk}{suffix}"
        if ".." in PurePosixPath(relative).parts or PurePosixPath(relative).is_absolute():
            raise ValueError(f"Refusing to write {relative!r} outside the export folder.")
        yield smear.kind, relative, smear, [
            relative, smear.review_label, smear.prediction.label, int(smear.prediction.in_domain),
            f"{smear.prediction.model_name} {smear.prediction.model_version}".strip(),
            smear.reviewed_by.email if smear.reviewed_by else "", smear.case.accession_number, smear.sha256,
        ]


def _labels_csv(rows):
    """labels.csv of one subfolder: the header, then one formula-safe row per image."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def export_reviewed(dest, smears=None):
    """Write every reviewed smear of signed-out cases (confirmed or changed by
    the pathologist) into DEST/staging/<final stage>/ (blood-smear fields) and
    DEST/screening/<blast|normal>/ (single cells), each subfolder with its
    own labels.csv and directly usable as `python -m ml train --data
    DEST/staging` (or DEST/screening). DEST must be empty or absent.
    Returns the number of images written."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; export into a new folder.")
    # Patient images: folders and files get the media's modes (services.files), not the umask's.
    for sub, labels in EXPORT_LAYOUT.values():
        for label in labels:  # the model's classes always exist, even when empty
            make_private_dirs(dest / sub / label)
    rows = {kind: [] for kind in EXPORT_LAYOUT}
    for kind, relative, smear, row in _export_entries(reviewed_smears() if smears is None else smears):
        target = _inside(dest / EXPORT_LAYOUT[kind][0], relative)
        with smear.image.open("rb") as src, create_private_file(target) as out:
            for chunk in src.chunks():
                out.write(chunk)
        rows[kind].append(row)
    for kind, (sub, _) in EXPORT_LAYOUT.items():
        with create_private_file(dest / sub / EXPORT_CSV, "w", encoding="utf-8", newline="") as out:
            out.write(_labels_csv(rows[kind]))
    return sum(len(r) for r in rows.values())


def write_export_zip(out, smears=None):
    """The same export as export_reviewed, as reviewed/<subfolder>/... members of
    a zip written to the binary file `out`, streamed from storage (no copy on
    disk first). Images are stored, not deflated: JPEG and PNG are compressed
    already. Returns the number of images."""
    rows = {kind: [] for kind in EXPORT_LAYOUT}
    with zipfile.ZipFile(out, "w") as zf:
        for kind, relative, smear, row in _export_entries(reviewed_smears() if smears is None else smears):
            with smear.image.open("rb") as src, zf.open(f"reviewed/{EXPORT_LAYOUT[kind][0]}/{relative}", "w") as dst:
                for chunk in src.chunks():
                    dst.write(chunk)
            rows[kind].append(row)
        for kind, (sub, _) in EXPORT_LAYOUT.items():
            zf.writestr(f"reviewed/{sub}/{EXPORT_CSV}", _labels_csv(rows[kind]), compress_type=zipfile.ZIP_DEFLATED)
    return sum(len(r) for r in rows.values())


def record_download(user, *, image_count, export=None, cases=()):
    """Record that ``user`` took ``image_count`` reviewed images out of the portal: a ReviewedExport's zip
    (``export``) or the case admin's export of ``cases``. Called before the zip is sent."""
    via = ExportDownload.Via.EXPORTS_PAGE if export is not None else ExportDownload.Via.CASE_ADMIN
    return ExportDownload.objects.create(export=export, downloaded_by=user, via=via, image_count=image_count,
                                         cases=", ".join(case.accession_number for case in cases))


def request_export(user):
    """Queue the export of every reviewed smear for a worker to zip. One at a
    time: while an export is queued or being built, asking again returns it
    instead of starting another (a double click, or many, builds one zip)."""
    with transaction.atomic():
        pending = (ReviewedExport.objects.select_for_update()
                   .filter(status__in=ReviewedExport.PENDING).first())
        if pending is not None:
            return pending, False
        export = ReviewedExport.objects.create(requested_by=user)
        transaction.on_commit(lambda: enqueue_export(export.pk))
    return export, True


def build_export(export_id):
    """The worker's part: zip the reviewed smears into the export's file.
    Does nothing unless the export is still queued (a message delivered twice
    builds once). Any failure is recorded on the export; nothing else changes."""
    now = timezone.now()
    if not ReviewedExport.objects.filter(pk=export_id, status=ReviewedExport.Status.QUEUED).update(
            status=ReviewedExport.Status.BUILDING, started_at=now):
        return None
    export = ReviewedExport.objects.get(pk=export_id)
    try:
        with tempfile.TemporaryFile() as out:
            count = write_export_zip(out)
            size = out.tell()
            out.seek(0)
            export.file.save("export.zip", File(out), save=False)
        export.image_count, export.size_bytes = count, size
        export.status, export.finished_at = ReviewedExport.Status.READY, timezone.now()
        export.save(update_fields=["file", "image_count", "size_bytes", "status", "finished_at"])
    except Exception as exc:  # the soft time limit too: recorded, and a new export can be asked for
        logger.exception("Export %s failed", export_id)
        ReviewedExport.objects.filter(pk=export_id).update(
            status=ReviewedExport.Status.FAILED, finished_at=timezone.now(), error=export_failure_message(exc))
        return None
    return export


def export_failure_message(exc):
    """What the exports page says about a failed build (build_export logs the whole exception)."""
    return (f"The export could not be built: {failure_words(exc)}. The details are in the server log; "
            "ask for a new export.")


def tidy_exports(now=None):
    """Run by the periodic sweep: an export queued or being built for longer
    than EXPORT_TIME_LIMIT_SECONDS and a minute is marked failed (its worker or
    message was lost; ask again); a ready export's zip is deleted after
    EXPORT_KEEP_DAYS (copies of patient images are not kept longer than
    needed), the row stays as the record. Returns (failed, expired)."""
    now = now or timezone.now()
    lost_before = now - timedelta(seconds=settings.EXPORT_TIME_LIMIT_SECONDS + 60)
    failed = ReviewedExport.objects.filter(
        status__in=ReviewedExport.PENDING, requested_at__lt=lost_before,
    ).update(status=ReviewedExport.Status.FAILED, finished_at=now,
             error="The export was not finished in time (its worker stopped or the message was lost); ask again.")
    expired = 0
    old = ReviewedExport.objects.filter(status=ReviewedExport.Status.READY,
                                        finished_at__lt=now - timedelta(days=settings.EXPORT_KEEP_DAYS))
    for export in old:
        export.file.delete(save=False)
        export.status = ReviewedExport.Status.EXPIRED
        export.save(update_fields=["file", "status"])
        expired += 1
    return failed, expired
