"""The diagnosis app's models, one module per workflow stage; every name is importable from here.

- ``vocabulary``: the models' labels (Stage, CellLabel), identifier rules and text limits;
- ``cases``: Patient, Case and its workflow state (CaseState, CaseQuerySet.with_state);
- ``intake``: Smear (an uploaded image) and RejectedUpload;
- ``classification``: Prediction (a worker's answer, heat map and domain verdict);
- ``records``: the append-only AuditEvent and Notification;
- ``review``: CaseAddendum (after sign-out), ReviewedExport and ExportDownload.

Each module imports only the ones above it (Case's methods import the later stages when called). The upload
path functions stay importable here: migrations name them as ``diagnosis.models.<function>``.
"""
# In workflow order: each module imports only the ones above it.
from .vocabulary import (
    ADDENDUM_MAX_LENGTH,
    CLINICAL_NOTE_MAX_LENGTH,
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_VALIDATOR,
    REVIEW_COMMENT_MAX_LENGTH,
    REVIEW_REASON_MAX_LENGTH,
    SCREENING_LABELS,
    STAGING_LABELS,
    CellLabel,
    Stage,
    check_identifier_unique,
    identifier_key,
    label_display,
)
from .cases import Case, CaseQuerySet, CaseState, Patient
from .intake import IMAGE_FORMAT_FILES, RejectedUpload, Smear, display_upload_to, smear_upload_to, thumbnail_upload_to
from .classification import Prediction, heatmap_upload_to
from .records import AppendOnlyError, AppendOnlyQuerySet, AuditEvent, Notification
from .review import CaseAddendum, ExportDownload, ReviewedExport, export_upload_to

__all__ = [
    "ADDENDUM_MAX_LENGTH", "CLINICAL_NOTE_MAX_LENGTH", "IDENTIFIER_MAX_LENGTH", "IDENTIFIER_VALIDATOR",
    "REVIEW_COMMENT_MAX_LENGTH", "REVIEW_REASON_MAX_LENGTH", "SCREENING_LABELS", "STAGING_LABELS", "CellLabel",
    "Stage", "check_identifier_unique", "identifier_key", "label_display",
    "Case", "CaseQuerySet", "CaseState", "Patient",
    "IMAGE_FORMAT_FILES", "RejectedUpload", "Smear", "display_upload_to", "smear_upload_to", "thumbnail_upload_to",
    "Prediction", "heatmap_upload_to",
    "AppendOnlyError", "AppendOnlyQuerySet", "AuditEvent", "Notification",
    "CaseAddendum", "ExportDownload", "ReviewedExport", "export_upload_to",
]
