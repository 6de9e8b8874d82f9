"""What a worker writes back: the model's prediction for one smear, its heat map and domain verdict."""
import re
import uuid

from django.db import models
from django.utils import timezone

from .intake import Smear
from .vocabulary import SCREENING_LABELS, STAGING_LABELS, CellLabel, label_display


def heatmap_upload_to(instance, filename):
    return f"heatmaps/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


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
    def has_shown_heatmap(self):
        """A heat map to show: stored, for a prediction inside the model's domain (outside it there is no suggestion,
        so no map of one: a map would name the class the portal does not suggest)."""
        return bool(self.heatmap) and self.in_domain

    @property
    def heatmap_note(self):
        """What stands where no heat map is shown."""
        return "no heat map (outside the model's domain)" if not self.in_domain else "heat map unavailable"

    @property
    def label_display(self):
        return label_display(self.label)

    @property
    def explained_display(self):
        """What the heat map explains: the stored label's probability for a cell ("P(blast)"), the stage for a
        field (the screen flags cells; it does not call them blasts)."""
        return f"P({self.label})" if self.is_screening else self.label_display

    @property
    def model_display(self):
        """A readable model name: "Staging model v2026-11-23 (mobilenetv3_lstm-20261123-0915-s0)"
        when the version carries a training date (the full version stays, in brackets, so two
        models of one day differ), else "Staging model v<version>"."""
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
