"""Rules for text people type: length limits and control characters
(check_length) and the safe piece of a file name or header built from it
(safe_name_part)."""
import unicodedata

from .errors import ReviewError


def one_char_line_breaks(text: str) -> str:
    """The text with each line break as LF: a browser sends a text box's line break as CR LF but counts it as one
    character against maxlength, so a limit counts it as one too."""
    return text.replace("\r\n", "\n")


def without_control_characters(text: str) -> str:
    """The text less its control characters (NUL, escape, form feed, DEL, the C1 range...) but line breaks and tabs,
    and less the Unicode non-characters: invisible in every page and report, they would let a "required" reason
    be a lone NUL, and some of them break a PDF or a spreadsheet cell."""
    return "".join(ch for ch in text if ch in "\n\t" or (unicodedata.category(ch) != "Cc"
                                                       and not _is_noncharacter(ch)))


#: Characters that show nothing on their own: format characters (zero-width space and joiners, direction marks
#: and overrides, soft hyphen, BOM: category Cf), spaces and separators (Z*), combining marks (Mn, Me) and the
#: Hangul fillers, the braille blank, the Khmer inherent vowels and the musical null notehead, which are letters or
#: symbols that render blank.
_BLANK_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp", "Mn", "Me"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5\U0001d159")


def has_visible_character(text: str) -> bool:
    return any(not ch.isspace() and ch not in _BLANK_LETTERS and unicodedata.category(ch) not in _BLANK_CATEGORIES
               for ch in text)


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def check_length(text: str, limit: int, what: str) -> str:
    """The text with its line breaks as LF, control characters removed and
    the ends stripped (without_control_characters), or ReviewError when it is
    longer than the field allows (every free text is bounded; the message
    says the limit), counting a line break as one character
    (one_char_line_breaks)."""
    text = without_control_characters(one_char_line_breaks(text)).strip()
    if not has_visible_character(text):
        text = ""  # a "required" text must say something a reader can see
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
