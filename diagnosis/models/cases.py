"""Patients and their cases: who the specimen is from, and where the case stands in the lab's workflow."""
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from .vocabulary import (
    CLINICAL_NOTE_MAX_LENGTH,
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_VALIDATOR,
    REVIEW_COMMENT_MAX_LENGTH,
    CellLabel,
    Stage,
    check_identifier_unique,
    identifier_key,
)


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


class CaseState(models.TextChoices):
    """Where a case stands in the lab's workflow (CaseQuerySet.with_state)."""

    AWAITING_CLASSIFICATION = "awaiting_classification", "Awaiting classification"
    AWAITING_REVIEW = "awaiting_review", "Awaiting review"
    IN_REVIEW = "in_review", "In review"
    SIGNED_OUT = "signed_out", "Signed out"
    ADDENDUM = "addendum", "Signed out, with addendum"
    CANCELLED = "cancelled", "Cancelled"


class CaseQuerySet(models.QuerySet):
    def with_state(self):
        """Annotate `workflow_state` (a CaseState value), so lists show and
        filter the state in the database. The only implementation of the rule:

        * cancelled (opened by mistake, before any image): cancelled;
        * signed out and amended: addendum; signed out: signed out;
        * every smear classified, and a smear reviewed or a final stage saved: in review;
        * every smear classified, nothing reviewed yet: awaiting review;
        * otherwise (no smear, smears queued or failed): awaiting classification.
        """
        # The later workflow stages' models refer to Case, so they are imported when called.
        from .intake import Smear
        from .review import CaseAddendum

        reviewed = Smear.objects.filter(case=models.OuterRef("pk")).exclude(review_label="")
        amended = CaseAddendum.objects.filter(case=models.OuterRef("pk"))
        return self.annotate(
            workflow_state=models.Case(
                models.When(cancelled_at__isnull=False, then=models.Value(CaseState.CANCELLED)),
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
        PROCESSING = "processing", "Queued or being classified"
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
    # Moved on by every change a sign-out would sign (a smear reviewed, marked (not) assessable, the draft final
    # stage or comment saved), under the case row lock. The review page's finalize form sends the version it showed;
    # sign_out and set_final_stage refuse another (ReviewConflict): nobody signs or overwrites what they never saw.
    review_version = models.PositiveIntegerField(default=0, editable=False)
    # A case opened by mistake, cancelled before any image was kept (services.cancel_case): it stays, with its
    # audit trail, and takes nothing more.
    cancelled_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    cancel_reason = models.CharField(max_length=500, blank=True)

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
    def is_cancelled(self):
        return self.cancelled_at is not None

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
        from .classification import Prediction
        from .intake import Smear

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
        from .intake import Smear

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
        from .intake import Smear

        return self.smears.filter(kind=Smear.Kind.FIELD).exists()

    def smear_counts(self):
        from .intake import Smear

        counts = {s: 0 for s in Smear.Status.values}
        for row in self.smears.values("status").annotate(n=models.Count("pk")):
            counts[row["status"]] = row["n"]
        return counts
