"""Rules for text people type: length limits (check_length) and the safe
piece of a file name or header built from it (safe_name_part)."""
from .errors import ReviewError


def check_length(text: str, limit: int, what: str) -> str:
    """The text with its line breaks as LF, or ReviewError when it is longer
    than the field allows (every free text is bounded; the message says the
    limit). A browser sends each line break of a text box as CR LF but counts
    it as one character against maxlength: so does this."""
    text = text.replace("\r\n", "\n")
    if len(text) > limit:
        raise ReviewError(f"{what} is {len(text):,} characters long; the limit is {limit:,} characters.")
    return text


def safe_name_part(text: str) -> str:
    """A piece of a file name or header built from user-typed text: anything
    outside letters, digits, dot, hyphen and underscore becomes "_", and no
    leading dot (so "..", "/" and newlines can never appear)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:64].lstrip(".")
    return cleaned or "_"
