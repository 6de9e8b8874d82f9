"""What the portal keeps about what happened: the append-only audit trail and people's notifications."""
from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from ..formatting import format_when
from .cases import Case
from .intake import Smear


class AppendOnlyError(Exception):
    pass


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only; bulk updates are refused.")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only; they cannot be deleted.")

    _raw_delete = delete


class AuditEvent(models.Model):
    """One entry of a case's audit trail. Append-only: saving an existing row,
    deleting a row and bulk update/delete all raise AppendOnlyError. Written
    only by diagnosis.services.audit.record_event."""

    class Action(models.TextChoices):
        UPLOAD = "upload", "Smear uploaded"
        UPLOAD_REJECTED = "upload_rejected", "Upload rejected"
        PREDICTION = "prediction", "Model prediction"
        CLASSIFICATION_FAILED = "classification_failed", "Classification failed"
        RETRY = "retry", "Classification retried"
        CONFIRM = "confirm", "Smear label confirmed"
        OVERRIDE = "override", "Smear label changed"
        LABELLED = "labelled", "Smear labelled (no model suggestion)"
        FINAL_STAGE = "final_stage", "Final stage set"
        SIGN_OUT = "sign_out", "Case signed out"
        ADDENDUM = "addendum", "Addendum"
        NOT_ASSESSABLE = "not_assessable", "Smear marked not assessable"
        ASSESSABLE = "assessable", "Smear marked assessable again"
        CASE_OPENED = "case_opened", "Case opened"
        CASE_CANCELLED = "case_cancelled", "Case cancelled"
        CASE_CHANGED = "case_changed", "Case data changed"
        PATIENT_CHANGED = "patient_changed", "Patient data changed"
        ORIGINAL_DOWNLOADED = "original_download", "Original image downloaded"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="audit_events")
    smear = models.ForeignKey(Smear, on_delete=models.PROTECT, null=True, blank=True, related_name="audit_events")
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    # Null for the workers (the model acts, not a person).
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    old_value = models.CharField(max_length=255, blank=True)
    new_value = models.CharField(max_length=255, blank=True)
    reason = models.TextField(blank=True)
    model_version = models.CharField(max_length=200, blank=True)
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self):
        return f"{self.get_action_display()} · {self.case} · {format_when(self.created_at)}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("Audit events are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")


class Notification(models.Model):
    """A message for one person in the portal (and by e-mail when
    NOTIFY_BY_EMAIL is on): a technician's upload batch is classified, a
    case entered the review queue. Written by diagnosis.notifications in the
    transaction of the event; `key` makes each event notify a person once."""

    class Kind(models.TextChoices):
        BATCH_DONE = "batch_done", "Upload finished"
        CASE_READY = "case_ready", "Case ready for review"

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="notifications")
    text = models.CharField(max_length=255)
    key = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["recipient", "key"], name="notification_once_per_event")]

    def __str__(self):
        return f"{self.recipient}: {self.text}"

    def get_absolute_url(self):
        if self.kind == self.Kind.CASE_READY:
            return reverse("diagnosis:case_review", args=[self.case_id])
        return reverse("diagnosis:case_detail", args=[self.case_id])
