"""What a technician uploads: the smear images of a case, and the files refused at upload."""
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from .cases import Case
from .vocabulary import REVIEW_REASON_MAX_LENGTH


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


def display_upload_to(instance, filename):
    return f"renditions/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.png"


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
    # A PNG of what the model reads, for a stored image browsers would show otherwise (TIFF, 16-bit, alpha):
    # made on first view and kept (services.display); empty for images shown as stored.
    display_image = models.FileField(upload_to=display_upload_to, max_length=255, blank=True, editable=False)
    sha256 = models.CharField(max_length=64, db_index=True)
    #: sha256 of the picture as the model reads it (8-bit RGB, orientation applied, with its size:
    #: services.intake.pixels_sha256): the same picture in other bytes (another format, other TIFF preview pages)
    #: has the same. Empty for smears stored before it existed until `manage.py hash_smear_pixels` fills it.
    pixels_sha256 = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
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
    def review_state(self):
        """How the pathologist's label relates to the model's: "labelled" (the pathologist's own call on a smear
        outside the model's domain, where there was no suggestion to confirm or change), "changed", "confirmed",
        or "" when not reviewed."""
        if not self.review_label:
            return ""
        if self.outside_domain:
            return "labelled"
        return "changed" if self.is_overridden else "confirmed"

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
