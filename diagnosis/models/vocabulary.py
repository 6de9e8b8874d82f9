"""The portal's vocabulary: the models' labels, identifier rules and text limits, shared by every model module."""
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower, Trim


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


def label_display(label):
    """Human name of a model label ("Pre" -> "Pre-B", "blast" -> "Blast")."""
    for choices in (Stage, CellLabel):
        try:
            return choices(label).label
        except ValueError:
            pass
    return label
