import uuid
from pathlib import PurePath

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Lower, Trim
from django.urls import reverse
from django.utils import timezone

from .formatting import format_when


class Stage(models.TextChoices):
    """The classes of the staging model, in its order (ml predictor.classes)."""

    BENIGN = "Benign", "Benign"
    EARLY = "Early", "Early Pre-B"
    PRE = "Pre", "Pre-B"
    PRO = "Pro", "Pro-B"


class CellLabel(models.TextChoices):
    """The classes of the single-cell screening model (ml predictor.classes)."""

    BLAST = "blast", "Blast"
    NORMAL = "normal", "Normal"


#: Identifiers typed by people end up in file names, zip paths and HTTP
#: headers (export, PDF download): a strict character set keeps them from ever
#: becoming a path ("../") or breaking a header (newline, quote).
IDENTIFIER_VALIDATOR = RegexValidator(
    r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z",
    "Use letters, digits, dot, hyphen and underscore only (starting with a letter or digit, at most 64).",
    code="invalid_identifier",
)
#: Length limits of the free texts (forms, services and templates read them).
IDENTIFIER_MAX_LENGTH = 64
CLINICAL_NOTE_MAX_LENGTH = 2000
REVIEW_COMMENT_MAX_LENGTH = 2000
REVIEW_REASON_MAX_LENGTH = 1000
ADDENDUM_MAX_LENGTH = 4000


def identifier_key(field_name):
    """A stored, unique copy of an identifier without letter case and
    surrounding spaces: the database itself refuses "p-0002" next to
    "P-0002 ", for every writer (forms, admin, shell, bulk inserts)."""
    return models.GeneratedField(
        expression=Lower(Trim(field_name)),
        output_field=models.CharField(max_length=IDENTIFIER_MAX_LENGTH),
        db_persist=True,
        unique=True,
        editable=False,
    )


#: The label set of each model, in the model's order.
STAGING_LABELS = tuple(Stage.values)
SCREENING_LABELS = tuple(CellLabel.values)


class Patient(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        OTHER = "O", "Other"
        UNKNOWN = "U", "Unknown"

    lab_id = models.CharField(
        "lab identifier",
        max_length=IDENTIFIER_MAX_LENGTH,
        unique=True,
        validators=[IDENTIFIER_VALIDATOR],
        help_text=f"The laboratory's identifier for this patient, up to {IDENTIFIER_MAX_LENGTH} characters: letters, "
        "digits, dot, hyphen and underscore. Letter case and surrounding spaces do not make a new identifier.",
    )
    lab_id_key = identifier_key("lab_id")
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

        self.lab_id = (self.lab_id or "").strip()
        if self.birth_year and self.birth_year > timezone.now().year:
            raise ValidationError({"birth_year": "The birth year cannot be in the future."})

    def validate_unique(self, exclude=None):
        super().validate_unique(exclude)
        check_identifier_unique(self, "lab_id", "lab_id_key", exclude, "A patient with lab identifier")

    def save(self, *args, **kwargs):
        self.lab_id = (self.lab_id or "").strip()
        super().save(*args, **kwargs)


def check_identifier_unique(obj, field_name, key_name, exclude, what):
    """Form-level twin of identifier_key: a readable error instead of the
    database's IntegrityError when an identifier differs only in case or
    surrounding spaces from an existing one."""
    from django.core.exceptions import ValidationError

    if exclude and field_name in exclude:
        return
    value = (getattr(obj, field_name) or "").strip()
    if not value:
        return
    clash = type(obj)._default_manager.filter(**{key_name: value.lower()}).exclude(pk=obj.pk).first()
    if clash is not None:
        raise ValidationError(
            {field_name: f"{what} “{getattr(clash, field_name)}” already exists (identifiers ignore letter case "
             "and surrounding spaces)."}
        )


class CaseState(models.TextChoices):
    """Where a case stands in the lab's workflow (CaseQuerySet.with_state)."""

    AWAITING_CLASSIFICATION = "awaiting_classification", "Awaiting classification"
    AWAITING_REVIEW = "awaiting_review", "Awaiting review"
    IN_REVIEW = "in_review", "In review"
    SIGNED_OUT = "signed_out", "Signed out"
    ADDENDUM = "addendum", "Signed out, with addendum"


class CaseQuerySet(models.QuerySet):
    def with_state(self):
        """Annotate `workflow_state` (a CaseState value), so lists show and
        filter the state in the database. The only implementation of the rule:

        * signed out and amended: addendum; signed out: signed out;
        * every smear classified, and a smear reviewed or a final stage saved: in review;
        * every smear classified, nothing reviewed yet: awaiting review;
        * otherwise (no smear, smears queued or failed): awaiting classification.
        """
        reviewed = Smear.objects.filter(case=models.OuterRef("pk")).exclude(review_label="")
        amended = CaseAddendum.objects.filter(case=models.OuterRef("pk"))
        return self.annotate(
            workflow_state=models.Case(
                models.When(models.Exists(amended), signed_out_at__isnull=False, then=models.Value(CaseState.ADDENDUM)),
                models.When(signed_out_at__isnull=False, then=models.Value(CaseState.SIGNED_OUT)),
                models.When(
                    models.Q(status="done") & (~models.Q(final_stage="") | models.Exists(reviewed)),
                    then=models.Value(CaseState.IN_REVIEW),
                ),
                models.When(status="done", then=models.Value(CaseState.AWAITING_REVIEW)),
                default=models.Value(CaseState.AWAITING_CLASSIFICATION),
                output_field=models.CharField(max_length=32),
            )
        )


class Case(models.Model):
    class Status(models.TextChoices):
        """Processing state of the case, derived from its smears by
        services.case_state.refresh_case() whenever one of them changes."""

        EMPTY = "empty", "No smears yet"
        PROCESSING = "processing", "Processing"
        DONE = "done", "All smears classified"
        ATTENTION = "attention", "Needs attention"

    class Specimen(models.TextChoices):
        PERIPHERAL_BLOOD = "peripheral_blood", "Peripheral blood"
        BONE_MARROW = "bone_marrow", "Bone marrow aspirate"
        OTHER = "other", "Other"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="cases")
    accession_number = models.CharField(
        max_length=IDENTIFIER_MAX_LENGTH,
        unique=True,
        validators=[IDENTIFIER_VALIDATOR],
        help_text=f"Up to {IDENTIFIER_MAX_LENGTH} characters: letters, digits, dot, hyphen and underscore. Letter case "
        "and surrounding spaces do not make a new accession number.",
    )
    accession_key = identifier_key("accession_number")
    specimen_type = models.CharField(
        max_length=32,
        choices=Specimen.choices,
        default=Specimen.PERIPHERAL_BLOOD,
        db_default=Specimen.PERIPHERAL_BLOOD,  # rows written by older code or migrations get it too
        help_text="Printed on the report.",
    )
    collection_date = models.DateField(
        null=True, blank=True, help_text="The day the specimen was collected (printed on the report)."
    )
    clinical_note = models.TextField(
        blank=True, max_length=CLINICAL_NOTE_MAX_LENGTH, help_text=f"Up to {CLINICAL_NOTE_MAX_LENGTH} characters."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.EMPTY, db_index=True)
    # Case-level suggestion: see compute_suggestion(); stored so lists can filter.
    suggested_stage = models.CharField(max_length=8, choices=Stage.choices, blank=True, db_index=True)
    suggested_confidence = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cases_created")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Pathologist review (services.set_final_stage / sign_out). The final
    # stage is a staging label of the case's fields (validated in services);
    # empty for a case of single cells only, whose result is the reviewed
    # screening summary (Case.screening_summary).
    final_stage = models.CharField(max_length=32, blank=True, db_index=True)
    review_comment = models.TextField(blank=True, max_length=REVIEW_COMMENT_MAX_LENGTH)
    signed_out_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="cases_signed_out"
    )
    signed_out_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The final stage as signed out; final_stage may later change by addendum.
    signed_out_stage = models.CharField(max_length=32, blank=True)
    # Who signed out, as they were named at that moment: a later change of the
    # account's name or email never rewrites a past sign-out.
    signed_out_by_name = models.CharField(max_length=255, blank=True)
    signed_out_by_email = models.EmailField(max_length=254, blank=True)
    # The identifiers as signed out (the report shows these after sign-out).
    signed_out_patient_lab_id = models.CharField(max_length=64, blank=True)
    signed_out_patient_sex = models.CharField(max_length=1, choices=Patient.Sex.choices, blank=True)
    signed_out_patient_birth_year = models.PositiveSmallIntegerField(null=True, blank=True)

    objects = CaseQuerySet.as_manager()

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

    def clean(self):
        self.accession_number = (self.accession_number or "").strip()

    def validate_unique(self, exclude=None):
        super().validate_unique(exclude)
        check_identifier_unique(self, "accession_number", "accession_key", exclude, "A case with accession number")

    def save(self, *args, **kwargs):
        self.accession_number = (self.accession_number or "").strip()
        super().save(*args, **kwargs)

    @property
    def is_signed_out(self):
        return self.signed_out_at is not None

    @property
    def signer_display(self):
        """The signer of the sign-out as recorded then ("Name <email>"); rows
        signed out before the snapshot existed fall back to the account."""
        if not self.is_signed_out:
            return ""
        name, email = self.signed_out_by_name, self.signed_out_by_email
        if not email and self.signed_out_by_id:
            user = self.signed_out_by
            name, email = user.get_full_name() or user.email, user.email
        return email if not name or name == email else f"{name} <{email}>"

    @property
    def report_patient_lab_id(self):
        """The patient identifier of the report: as signed out once signed out."""
        return self.signed_out_patient_lab_id or self.patient.lab_id

    @property
    def _signed_patient_copy(self):
        # Cases signed out before sex and birth year were copied (blank sex) show the current values.
        return self.is_signed_out and bool(self.signed_out_patient_sex)

    @property
    def report_patient_sex_display(self):
        """The patient's sex on the report: as signed out once signed out."""
        if self._signed_patient_copy:
            return self.get_signed_out_patient_sex_display()
        return self.patient.get_sex_display()

    @property
    def report_patient_birth_year(self):
        """The patient's birth year on the report (None: not known): as signed out once signed out."""
        return self.signed_out_patient_birth_year if self._signed_patient_copy else self.patient.birth_year

    @property
    def state(self):
        """The CaseState of this case (from the list's annotation when there is one)."""
        value = self.__dict__.get("workflow_state")
        if value is None:
            value = type(self).objects.with_state().values_list("workflow_state", flat=True).get(pk=self.pk)
        return CaseState(value)

    @property
    def state_display(self):
        return self.state.label

    def compute_suggestion(self):
        """The suggested case-level stage: mean of the probability vectors of
        the classified blood-smear fields (single cells never count; nor do
        fields outside the model's domain or marked not assessable), its
        argmax, and that class's mean probability.

        Returns (stage, confidence, n_smears) or (None, None, 0) when no smear
        has been classified yet. This is the only implementation of the rule.
        """
        predictions = list(
            Prediction.objects.filter(smear__case=self, smear__status=Smear.Status.DONE, smear__kind=Smear.Kind.FIELD,
                                      in_domain=True, smear__not_assessable=False)
        )
        if not predictions:
            return None, None, 0
        means = {
            stage: sum(float(p.probabilities.get(stage, 0.0)) for p in predictions) / len(predictions)
            for stage in Stage
        }
        best = max(Stage, key=lambda s: means[s])  # ties: first class in model order
        return best, means[best], len(predictions)

    def screening_summary(self):
        """Single-cell screening of this case: cells uploaded, screened
        (classified), flagged as blast by the model (label from its
        sensitivity-tuned threshold), and reviewed / called blast by the
        pathologist. This is the only implementation of the rule."""
        every = list(self.smears.filter(kind=Smear.Kind.CELL).select_related("prediction"))
        not_assessable = [c for c in every if c.not_assessable]
        cells = [c for c in every if not c.not_assessable]
        classified = [c for c in cells if c.status == Smear.Status.DONE and hasattr(c, "prediction")]
        outside = [c for c in classified if not c.prediction.in_domain]
        # Cells outside the model's domain were not judged by the screen: they count as uploaded, not screened.
        screened = [c for c in classified if c.prediction.in_domain]
        flagged = sum(1 for c in screened if c.prediction.label == CellLabel.BLAST)
        reviewed = [c for c in classified if c.review_label]
        confirmed = sum(1 for c in reviewed if c.review_label == CellLabel.BLAST)
        thresholds = sorted({c.prediction.threshold for c in screened if c.prediction.threshold is not None})
        return {
            "cells": len(cells),
            "outside_domain": len(outside),
            "not_assessable": len(not_assessable),
            "screened": len(screened),
            "flagged": flagged,
            "flagged_fraction": flagged / len(screened) if screened else None,
            "reviewed": len(reviewed),
            "reviewed_blasts": confirmed,
            "reviewed_fraction": confirmed / len(reviewed) if reviewed else None,
            "thresholds": thresholds,
        }

    def has_field_smears(self):
        return self.smears.filter(kind=Smear.Kind.FIELD).exists()

    def smear_counts(self):
        counts = {s: 0 for s in Smear.Status.values}
        for row in self.smears.values("status").annotate(n=models.Count("pk")):
            counts[row["status"]] = row["n"]
        return counts


#: Stored file extension and served content type per detected image format.
IMAGE_FORMAT_FILES = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "TIFF": (".tif", "image/tiff"),
    "BMP": (".bmp", "image/bmp"),
}


def smear_upload_to(instance, filename):
    # Stored under a random name with the extension of the format Pillow
    # detected, never the upload's: a name like "x.html" must not decide how
    # the file is stored or served. The original is kept in original_filename.
    suffix = IMAGE_FORMAT_FILES.get(instance.image_format, (".img",))[0]
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

    class Kind(models.TextChoices):
        """What the image is, chosen at upload; decides the model."""

        FIELD = "field", "Blood-smear field (staging)"
        CELL = "cell", "Single segmented cell (blast screening)"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="smears")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.FIELD, db_index=True)
    image = models.FileField(upload_to=smear_upload_to, max_length=255)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    image_format = models.CharField(max_length=8)
    size_bytes = models.PositiveBigIntegerField()
    original_filename = models.CharField(max_length=255)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="smears_uploaded")
    # The files uploaded together (one add_smears call): progress bar and "batch done" notification.
    batch = models.UUIDField(null=True, blank=True, editable=False, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Pathologist review of this smear (services.review_smear): the label is
    # one of the labels of the model that classified it.
    review_label = models.CharField(max_length=32, blank=True)
    review_reason = models.TextField(blank=True, max_length=REVIEW_REASON_MAX_LENGTH)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="smears_reviewed"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # "Not assessable" (services.mark_not_assessable): the pathologist judges the image unusable (out of
    # focus, wrong specimen, not a smear...). Such a smear needs no review label and counts nowhere: not
    # in the case's suggestion, the screening summary, sign-out requirements, report counts or export.
    not_assessable = models.BooleanField(default=False, db_index=True)
    not_assessable_reason = models.CharField(max_length=500, blank=True)
    not_assessable_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="smears_not_assessable"
    )
    not_assessable_at = models.DateTimeField(null=True, blank=True)
    # Incremented by every review: the review form sends the version it showed,
    # so a second pathologist reviewing the same smear sees a conflict.
    review_version = models.PositiveIntegerField(default=0)
    # The last failure was a temporary database error (deadlock, lock wait):
    # the sweep queues the smear again instead of waiting for a person.
    transient_failure = models.BooleanField(default=False)

    class Meta:
        ordering = ["created_at", "pk"]
        permissions = [("retry_smear", "Can re-queue a failed smear")]
        indexes = [models.Index(fields=["status", "claimed_at"])]
        constraints = [
            # The duplicate check of add_smears, enforced by the database so
            # that two simultaneous uploads of one image cannot both store it.
            models.UniqueConstraint(fields=["case", "sha256"], name="smear_unique_image_per_case"),
        ]

    def __str__(self):
        return f"{self.original_filename} ({self.case})"

    @property
    def can_retry(self):
        """Failed, assessable, in a case still open: a signed-out case's smears are settled (changes go through
        an addendum), and a smear set aside as not assessable is marked assessable again before a retry."""
        return self.status == self.Status.FAILED and not self.not_assessable and not self.case.is_signed_out

    @property
    def is_cell(self):
        return self.kind == self.Kind.CELL

    @property
    def is_overridden(self):
        prediction = getattr(self, "prediction", None)
        return bool(self.review_label and prediction and self.review_label != prediction.label)

    @property
    def outside_domain(self):
        """Classified, but the model judged the image unlike its training images: no suggestion."""
        prediction = getattr(self, "prediction", None)
        return bool(prediction is not None and not prediction.in_domain)

    @property
    def has_suggestion(self):
        """The model's label may be shown as a suggestion: classified, in domain, and assessable."""
        prediction = getattr(self, "prediction", None)
        return bool(prediction is not None and prediction.in_domain and not self.not_assessable)


class Prediction(models.Model):
    """The model's output for one smear. One per smear: the database itself
    refuses a second classification.

    Either model fits: `label` is the model's answer (a staging stage for a
    blood-smear field, "blast"/"normal" for a single cell), `probabilities`
    maps each of the model's classes to its probability, and `threshold` is
    the screening model's decision threshold on P(blast) (null for staging).
    """

    class Task(models.TextChoices):
        STAGING = "staging", "Staging (blood-smear field)"
        SCREENING = "screening", "Screening (single cell)"

    smear = models.OneToOneField(Smear, on_delete=models.PROTECT, related_name="prediction")
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.STAGING, db_index=True)
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=100)
    label = models.CharField(max_length=32, db_index=True)
    probabilities = models.JSONField(default=dict)
    threshold = models.FloatField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    # Grad-CAM overlay (PNG) for the predicted class, written by the worker
    # right after the prediction. Empty with heatmap_error set when it failed:
    # the prediction itself is never lost because of the heat map.
    heatmap = models.FileField(upload_to=heatmap_upload_to, max_length=255, blank=True)
    heatmap_error = models.TextField(blank=True)
    # The model's domain check (ml.domain): False when the image is unlike the model's training images.
    # The label and probabilities are kept for transparency, but the portal shows no suggestion and
    # leaves such a smear out of the case's suggestion and screening summary.
    in_domain = models.BooleanField(default=True, db_index=True)
    domain_score = models.FloatField(null=True, blank=True)
    domain_reason = models.CharField(max_length=300, blank=True)
    # Heat maps wait on a queue of their own and may wait long behind others:
    # when one was last started or sent again by the sweep, and how many times
    # a worker started it (services.claim_heatmap, services.resend_lost_heatmaps).
    heatmap_requested_at = models.DateTimeField(null=True, blank=True)
    heatmap_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.label_display} for {self.smear}"

    @property
    def is_screening(self):
        return self.task == self.Task.SCREENING

    @property
    def label_display(self):
        return label_display(self.label)

    @property
    def model_display(self):
        """A readable model name: "Staging model v2026-11-23 (mobilenetv3_lstm-20261123-0915-s0)"
        when the version carries a training date (the full version stays, in brackets, so two
        models of one day differ), else "Staging model v<version>"."""
        import re

        kind = "Screening" if self.is_screening else "Staging"
        version = self.model_version
        if not version:
            return f"{kind} model"
        found = re.search(r"(20\d\d)-?([01]\d)-?([0-3]\d)", version)
        if not found:
            return f"{kind} model v{version}"
        day = "-".join(found.groups())
        return f"{kind} model v{day}" + ("" if version == day else f" ({version})")

    @property
    def confidence(self):
        """Probability of the model's label."""
        return float(self.probabilities.get(self.label, 0.0))

    @property
    def blast_probability(self):
        return float(self.probabilities[CellLabel.BLAST]) if self.is_screening else None

    @property
    def labels(self):
        """The label set of the model that made this prediction, in its order.
        (JSON objects may come back with sorted keys on MySQL, so the order
        comes from the known label sets.)"""
        keys = set(self.probabilities)
        for known in (STAGING_LABELS, SCREENING_LABELS):
            if keys == set(known):
                return known
        return tuple(sorted(keys))

    def ordered_probabilities(self):
        return [(label, float(self.probabilities[label])) for label in self.labels]


def label_display(label):
    """Human name of a model label ("Pre" -> "Pre-B", "blast" -> "Blast")."""
    for choices in (Stage, CellLabel):
        try:
            return choices(label).label
        except ValueError:
            pass
    return label


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
        FINAL_STAGE = "final_stage", "Final stage set"
        SIGN_OUT = "sign_out", "Case signed out"
        ADDENDUM = "addendum", "Addendum"
        NOT_ASSESSABLE = "not_assessable", "Smear marked not assessable"
        ASSESSABLE = "assessable", "Smear marked assessable again"
        CASE_OPENED = "case_opened", "Case opened"
        CASE_CHANGED = "case_changed", "Case data changed"
        PATIENT_CHANGED = "patient_changed", "Patient data changed"

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


class Notification(models.Model):
    """A message for one person in the portal (and by e-mail when
    NOTIFY_BY_EMAIL is on): a technician's upload batch is classified, a
    case entered the review queue. Written by diagnosis.notifications in the
    transaction of the event; `key` makes each event notify a person once."""

    class Kind(models.TextChoices):
        BATCH_DONE = "batch_done", "Upload classified"
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
