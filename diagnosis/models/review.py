"""What follows a pathologist's sign-out: addenda to a signed-out case, and exports of reviewed smears."""
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from ..formatting import format_when
from .cases import Case
from .records import AppendOnlyError
from .vocabulary import ADDENDUM_MAX_LENGTH


class CaseAddendum(models.Model):
    """A change or note after sign-out. Appended; the original sign-out and
    earlier addenda stay as they were."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="addenda")
    text = models.TextField(max_length=ADDENDUM_MAX_LENGTH)
    # The final stage the addendum sets, or blank when it leaves it as it was.
    new_final_stage = models.CharField(max_length=32, blank=True)
    previous_final_stage = models.CharField(max_length=32, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name_plural = "case addenda"

    def __str__(self):
        return f"Addendum to {self.case} ({format_when(self.created_at)})"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("Addenda are append-only; write a new addendum instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Addenda cannot be deleted.")


def export_upload_to(instance, filename):
    return f"exports/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.zip"


class ReviewedExport(models.Model):
    """One request for the reviewed-smear export (class folders + labels.csv as
    a zip), built by a worker (services.build_export), never inside the web
    request: an export grows with every signed case. The zip is kept
    EXPORT_KEEP_DAYS, then deleted; the row stays as the record of who took
    which images out of the portal, and when."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Being built"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Deleted (expired)"

    #: Asked for and not finished: one at a time, and what the sweep fails when it is lost.
    PENDING = (Status.QUEUED, Status.BUILDING)

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    file = models.FileField(upload_to=export_upload_to, max_length=255, blank=True)
    image_count = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-pk"]

    def __str__(self):
        return f"Export {self.pk} ({self.get_status_display()})"

    @property
    def pending(self):
        return self.status in self.PENDING

    @property
    def download_name(self):
        """Built from the request time alone, never from user input."""
        return f"leukportal-reviewed-{timezone.localtime(self.requested_at):%Y%m%d-%H%M}-{self.pk}.zip"


class ExportDownload(models.Model):
    """Each time reviewed smear images left the portal as a zip, and who took them: a download of a ReviewedExport
    (the exports page) or the case admin's export of selected cases (made in its request). Append-only: the record
    of who took which patients' images, kept after the zip itself is deleted."""

    class Via(models.TextChoices):
        EXPORTS_PAGE = "portal", "Exports page"
        CASE_ADMIN = "admin", "Case admin (selected cases)"

    export = models.ForeignKey(ReviewedExport, on_delete=models.PROTECT, null=True, blank=True,
                               related_name="downloads")
    downloaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    downloaded_at = models.DateTimeField(default=timezone.now, db_index=True)
    via = models.CharField(max_length=8, choices=Via.choices)
    image_count = models.PositiveIntegerField()
    #: The cases' accession numbers (the case admin's export); empty for a whole export.
    cases = models.TextField(blank=True)

    class Meta:
        ordering = ["-downloaded_at", "-pk"]

    def __str__(self):
        return f"{self.get_via_display()}: {self.image_count} images ({format_when(self.downloaded_at)})"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("Export downloads are a record: append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Export downloads are a record: they cannot be deleted.")
