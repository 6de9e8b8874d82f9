"""The refusals of the diagnosis services. Each str() is the sentence the user
reads; views show it unchanged. And failure_words: what a failed job tells a
user about an unexpected exception. Imports nothing of the portal."""
import os

from celery.exceptions import SoftTimeLimitExceeded


class RejectedImage(Exception):
    """An uploaded file that is not an acceptable smear image. str() is the
    reason, written for the technician."""


class InvalidModelOutput(ValueError):
    pass


class StorageFailed(Exception):
    """The media storage refused to store an upload's files (e.g. the disk is full). str() says so for the
    technician, without the server's paths; nothing of that upload was kept."""


class ReviewError(ValueError):
    """A review action that the rules refuse; str() is shown to the user."""


class CaseLocked(ReviewError):
    pass


class ReviewConflict(ReviewError):
    """The smear (its review) or the case (a review, an assessability mark or the draft: Case.review_version) changed
    after this form was shown."""


def failure_words(exc: BaseException) -> str:
    """What failed, in words safe to show a user: never the exception's own text, which may name paths on the
    server, storage details or SQL (the caller logs the whole exception). A file error says the system's name
    for it ("No space left on device"), a time limit says so, anything else only its kind."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return "it took longer than its time limit"
    if isinstance(exc, OSError):
        words = "a file could not be read or written"
        return words + (f" ({os.strerror(exc.errno)})" if isinstance(exc.errno, int) else "")
    return f"unexpected error ({type(exc).__name__})"
