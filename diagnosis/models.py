import uuid
from pathlib import PurePath

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Stage(models.TextChoices):
    """The classes of the staging model, in its order (ml predictor.classes)."""

    BENIGN = "Benign", "Benign"
    EARLY = "Early", "Early Pre-B"
    PRE = "Pre", "Pre-B"
    PRO = "Pro", "Pro-B"


#: Prediction field holding each class probability.
PROBABILITY_FIELDS = {
    Stage.BENIGN: "prob_benign",
    Stage.EARLY: "prob_early",
    Stage.PRE: "prob_pre",
    Stage.PRO: "prob_pro",
}


class Patient(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        OTHER = "O", "Other"
        UNKNOWN = "U", "Unknown"

    lab_id = models.CharField(
        "lab identifier", max_length=64, unique=True, help_text="The laboratory's identifier for this patient."
    )
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    birth_year = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1900), MaxValueValidator(2100)]
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["lab_id"]

    def __str__(self):
        return self.lab_id

    def get_absolute_url(self):
        return reverse("diagnosis:patient_detail", args=[self.pk])

    def clean(self):
        from django.core.exceptions import ValidationError

        if self.birth_year and self.birth_year > timezone.now().year:
            raise ValidationError({"birth_year": "The birth year cannot be in the future."})


class Case(models.Model):
    class Status(models.TextChoices):
        """Processing state of the case, derived from its smears by
        services.refresh_case() whenever one of them changes."""

        EMPTY = "empty", "No smears yet"
        PROCESSING = "processing", "Processing"
        DONE = "done", "All smears classified"
        ATTENTION = "attention", "Needs attention"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="cases")
    accession_number = models.CharField(max_length=64, unique=True)
    clinical_note = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.EMPTY, db_index=True)
    # Case-level suggestion: see compute_suggestion(); stored so lists can filter.
    suggested_stage = models.CharField(max_length=8, choices=Stage.choices, blank=True, db_index=True)
    suggested_confidence = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases_created")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Pathologist review (services.set_final_stage / sign_out). The final
    # stage is a label of the case's model (validated in services), stored as
    # a string so that other label sets fit without a schema change.
    final_stage = models.CharField(max_length=32, blank=True, db_index=True)
    review_comment = models.TextField(blank=True)
    signed_out_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="cases_signed_out"
    )
    signed_out_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The final stage as signed out; final_stage may later change by addendum.
    signed_out_stage = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [
            ("review_case", "Can review a case (confirm or reclassify smears, set the final stage)"),
            ("sign_out_case", "Can sign out a case and add addenda to signed-out cases"),
            ("view_review_dashboard", "Can see the model/pathologist agreement dashboard"),
            ("export_reviewed", "Can export reviewed smears as training data"),
        ]

    def __str__(self):
        return self.accession_number

    def get_absolute_url(self):
        return reverse("diagnosis:case_detail", args=[self.pk])

    @property
    def is_signed_out(self):
        return self.signed_out_at is not None

    def compute_suggestion(self):
        """The suggested case-level stage: mean of the probability vectors of
        the classified smears, its argmax, and that class's mean probability.

        Returns (stage, confidence, n_smears) or (None, None, 0) when no smear
        has been classified yet. This is the only implementation of the rule.
        """
        predictions = list(Prediction.objects.filter(smear__case=self, smear__status=Smear.Status.DONE))
        if not predictions:
            return None, None, 0
        means = {
            stage: sum(getattr(p, field) for p in predictions) / len(predictions)
            for stage, field in PROBABILITY_FIELDS.items()
        }
        best = max(Stage, key=lambda s: means[s])  # ties: first class in model order
        return best, means[best], len(predictions)

    def smear_counts(self):
        counts = {s: 0 for s in Smear.Status.values}
        for row in self.smears.values("status").annotate(n=models.Count("pk")):
            counts[row["status"]] = row["n"]
        return counts


def smear_upload_to(instance, filename):
    # Stored under a random name: original names may carry patient data or
    # collide; the original is kept in Smear.original_filename.
    suffix = PurePath(filename).suffix.lower()[:8]
    return f"smears/{timezone.now():%Y/%m}/{uuid.uuid4().hex}{suffix}"


def thumbnail_upload_to(instance, filename):
    return f"thumbnails/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.jpg"


def heatmap_upload_to(instance, filename):
    return f"heatmaps/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


class Smear(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="smears")
    image = models.FileField(upload_to=smear_upload_to, max_length=255)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    image_format = models.CharField(max_length=8)
    size_bytes = models.PositiveBigIntegerField()
    original_filename = models.CharField(max_length=255)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="smears_uploaded")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Pathologist review of this smear (services.review_smear): the label is
    # one of the labels of the model that classified it.
    review_label = models.CharField(max_length=32, blank=True)
    review_reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="smears_reviewed"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        permissions = [("retry_smear", "Can re-queue a failed smear")]
        indexes = [models.Index(fields=["status", "claimed_at"])]

    def __str__(self):
        return f"{self.original_filename} ({self.case})"

    @property
    def can_retry(self):
        return self.status == self.Status.FAILED

    @property
    def is_overridden(self):
        prediction = getattr(self, "prediction", None)
        return bool(self.review_label and prediction and self.review_label != prediction.stage)


class Prediction(models.Model):
    """The model's output for one smear. One per smear: the database itself
    refuses a second classification."""

    smear = models.OneToOneField(Smear, on_delete=models.PROTECT, related_name="prediction")
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=100)
    stage = models.CharField(max_length=8, choices=Stage.choices)
    prob_benign = models.FloatField()
    prob_early = models.FloatField()
    prob_pre = models.FloatField()
    prob_pro = models.FloatField()
    latency_ms = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Grad-CAM overlay (PNG) for the predicted class, written by the worker
    # right after the prediction. Empty with heatmap_error set when it failed:
    # the prediction itself is never lost because of the heat map.
    heatmap = models.FileField(upload_to=heatmap_upload_to, max_length=255, blank=True)
    heatmap_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.get_stage_display()} for {self.smear}"

    @property
    def probabilities(self):
        return {stage.value: getattr(self, field) for stage, field in PROBABILITY_FIELDS.items()}

    @property
    def confidence(self):
        return getattr(self, PROBABILITY_FIELDS[Stage(self.stage)])

    @property
    def labels(self):
        """The label set of the model that made this prediction, in its order."""
        return tuple(self.probabilities)


class CaseAddendum(models.Model):
    """A change or note after sign-out. Appended; the original sign-out and
    earlier addenda stay as they were."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="addenda")
    text = models.TextField()
    # The final stage the addendum sets, or blank when it leaves it as it was.
    new_final_stage = models.CharField(max_length=32, blank=True)
    previous_final_stage = models.CharField(max_length=32, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name_plural = "case addenda"

    def __str__(self):
        return f"Addendum to {self.case} ({self.created_at:%Y-%m-%d %H:%M})"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("Addenda are append-only; write a new addendum instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Addenda cannot be deleted.")


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
    only by diagnosis.services.record_event."""

    class Action(models.TextChoices):
        UPLOAD = "upload", "Smear uploaded"
        UPLOAD_REJECTED = "upload_rejected", "Upload rejected"
        PREDICTION = "prediction", "Model prediction"
        CLASSIFICATION_FAILED = "classification_failed", "Classification failed"
        RETRY = "retry", "Classification retried"
        CONFIRM = "confirm", "Smear label confirmed"
        OVERRIDE = "override", "Smear label changed"
        FINAL_STAGE = "final_stage", "Final stage set"
        SIGN_OUT = "sign_out", "Case signed out"
        ADDENDUM = "addendum", "Addendum"

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
        return f"{self.get_action_display()} · {self.case} · {self.created_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise AppendOnlyError("Audit events are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")


class RejectedUpload(models.Model):
    """A file refused at upload, kept so the technician can see what and why."""

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="rejected_uploads")
    filename = models.CharField(max_length=255)
    reason = models.TextField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"{self.filename}: {self.reason}"
