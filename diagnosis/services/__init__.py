"""Domain rules of the diagnosis app, one module per workflow stage.

Views, Celery tasks, the admin, reports and management commands call
`services.<name>`; none of them re-implements a rule. The names are
re-exported here (explicit __all__); inside the package, modules import each
other by submodule (`from .audit import record_event`), and each imports only
modules listed before it:

    errors, audit, transactions, case_state, text, files, dispatch,
    intake, display, classification, recovery, records, review, signout, export, backup

The read side (review queue, status payloads, labels, agreement, search)
lives in diagnosis/selectors.py; services call it, never the other way round.
Its names are re-exported here too, so `services.review_queue()` and the
like keep working for existing callers; new code imports them from selectors.

`dispatch` is the only importer of diagnosis.tasks (inside its function).
A test that replaces a name patches it in the module where it is looked up
(e.g. `services.intake.check_image`).
"""
from ..selectors import (
    agreement_by_kind,
    agreement_stats,
    case_status_payload,
    confirmable_smears,
    label_display,
    labels_for_case,
    labels_for_smear,
    next_case_in_queue,
    QueueEntry,
    review_queue,
    reviewed_smears,
    screening_summary_text,
    search_filter,
    smears_status_payload,
)
from .errors import (
    CaseLocked,
    failure_words,
    InvalidModelOutput,
    RejectedImage,
    ReviewConflict,
    ReviewError,
    StorageFailed,
)
from .audit import (
    record_event,
)
from .transactions import (
    is_transient_db_error,
    retry_transaction,
    TRANSACTION_ATTEMPTS,
    TRANSIENT_DB_ERROR_CODES,
)
from .case_state import (
    _refresh_case_by_id,
    lock_open_case,
    refresh_case,
)
from .text import (
    check_length,
    has_visible_character,
    one_char_line_breaks,
    safe_name_part,
    without_control_characters,
)
from .dispatch import (
    enqueue_classification,
    enqueue_heatmap,
    HEATMAP_PRIORITY_FIRST,
    HEATMAP_PRIORITY_LATER,
    heatmap_priority,
)
from .intake import (
    add_smears,
    ALLOWED_FORMATS,
    check_image,
    check_takes_smears,
    CheckedImage,
    FORMAT_ALIASES,
    FORMAT_SIGNATURES,
    THUMBNAIL_SIZE,
    UploadOutcome,
)
from .display import (
    BROWSER_IMAGE_FORMATS,
    DisplayedImage,
    displayed_image,
    NotDisplayable,
    prepare_displayed_image,
    record_original_download,
)
from .classification import (
    HEATMAP_AFTER_SIGN_OUT,
    claim_batch,
    claim_heatmap,
    claim_smear,
    heatmap_failed,
    mark_failed,
    record_prediction,
    record_predictions,
    store_heatmap,
    validate_domain,
    validate_result,
)
from .recovery import (
    resend_lost_heatmaps,
    retry_smear,
    sweep_stale_smears,
)
from .records import (
    CANCEL_REASON_MAX_LENGTH,
    cancel_case,
    cancellable,
    CASE_EDITABLE_FIELDS,
    PATIENT_EDITABLE_FIELDS,
    record_case_opened,
    update_case,
    update_patient,
)
from .review import (
    apply_final_stage,
    confirm_remaining,
    mark_assessable,
    mark_not_assessable,
    NOT_ASSESSABLE_REASON_MAX,
    review_smear,
    set_final_stage,
)
from .signout import (
    add_addendum,
    sign_out,
    sign_out_problems,
)
from .export import (
    _inside,
    EXPORT_COLUMNS,
    EXPORT_CSV,
    EXPORT_LAYOUT,
    build_export,
    export_reviewed,
    record_download,
    request_export,
    spreadsheet_safe,
    tidy_exports,
    write_export_zip,
)
from .backup import (
    backup_portal,
    BackupError,
    restore_portal,
    verify_backup,
)

__all__ = [
    "add_addendum",
    "add_smears",
    "agreement_by_kind",
    "agreement_stats",
    "ALLOWED_FORMATS",
    "apply_final_stage",
    "backup_portal",
    "BackupError",
    "CASE_EDITABLE_FIELDS",
    "case_status_payload",
    "CaseLocked",
    "check_image",
    "check_takes_smears",
    "check_length",
    "one_char_line_breaks",
    "CheckedImage",
    "claim_batch",
    "claim_heatmap",
    "claim_smear",
    "confirm_remaining",
    "confirmable_smears",
    "enqueue_classification",
    "enqueue_heatmap",
    "EXPORT_COLUMNS",
    "EXPORT_CSV",
    "EXPORT_LAYOUT",
    "export_reviewed",
    "FORMAT_ALIASES",
    "FORMAT_SIGNATURES",
    "heatmap_failed",
    "failure_words",
    "StorageFailed",
    "InvalidModelOutput",
    "is_transient_db_error",
    "label_display",
    "labels_for_case",
    "labels_for_smear",
    "lock_open_case",
    "mark_assessable",
    "mark_failed",
    "mark_not_assessable",
    "next_case_in_queue",
    "NOT_ASSESSABLE_REASON_MAX",
    "PATIENT_EDITABLE_FIELDS",
    "QueueEntry",
    "record_case_opened",
    "record_event",
    "record_prediction",
    "record_predictions",
    "refresh_case",
    "RejectedImage",
    "resend_lost_heatmaps",
    "restore_portal",
    "retry_smear",
    "retry_transaction",
    "review_queue",
    "review_smear",
    "ReviewConflict",
    "reviewed_smears",
    "ReviewError",
    "safe_name_part",
    "screening_summary_text",
    "search_filter",
    "set_final_stage",
    "sign_out",
    "sign_out_problems",
    "spreadsheet_safe",
    "build_export",
    "request_export",
    "tidy_exports",
    "write_export_zip",
    "smears_status_payload",
    "store_heatmap",
    "HEATMAP_AFTER_SIGN_OUT",
    "HEATMAP_PRIORITY_FIRST",
    "HEATMAP_PRIORITY_LATER",
    "heatmap_priority",
    "sweep_stale_smears",
    "THUMBNAIL_SIZE",
    "TRANSACTION_ATTEMPTS",
    "TRANSIENT_DB_ERROR_CODES",
    "update_case",
    "cancel_case",
    "cancellable",
    "CANCEL_REASON_MAX_LENGTH",
    "update_patient",
    "UploadOutcome",
    "validate_domain",
    "validate_result",
    "verify_backup",
    "BROWSER_IMAGE_FORMATS",
    "DisplayedImage",
    "displayed_image",
    "NotDisplayable",
    "record_original_download",
    "prepare_displayed_image",
    "has_visible_character",
    "without_control_characters",
    "record_download",
]
