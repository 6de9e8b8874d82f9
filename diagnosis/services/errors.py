"""The refusals of the diagnosis services. Each str() is the sentence the user
reads; views show it unchanged. Imports nothing."""


class RejectedImage(Exception):
    """An uploaded file that is not an acceptable smear image. str() is the
    reason, written for the technician."""


class InvalidModelOutput(ValueError):
    pass


class ReviewError(ValueError):
    """A review action that the rules refuse; str() is shown to the user."""


class CaseLocked(ReviewError):
    pass


class ReviewConflict(ReviewError):
    """Someone else reviewed the smear after this form was shown."""
