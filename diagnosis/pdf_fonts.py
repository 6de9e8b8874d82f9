"""Fonts for the PDF report: Unicode TrueType fonts bundled under
static/fonts/ (with their licences) and registered with reportlab, so
superscripts, accents and CJK print as letters, never as boxes.

DejaVu Sans covers Latin, Greek, Cyrillic and most symbols; Droid Sans
Fallback covers CJK. reportlab has no per-glyph fallback, so `markup()`
wraps each run of characters that DejaVu lacks in the fallback font.
Imports only reportlab and the standard library.
"""
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

FONT_DIR = Path(__file__).resolve().parent.parent / "static" / "fonts"
REGULAR, BOLD, ITALIC, FALLBACK = "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DroidSansFallback"
FILES = {
    REGULAR: "DejaVuSans.ttf",
    BOLD: "DejaVuSans-Bold.ttf",
    ITALIC: "DejaVuSans-Oblique.ttf",
    FALLBACK: "DroidSansFallbackFull.ttf",
}


@cache
def register() -> dict:
    """Register the bundled fonts once per process; returns {name: TTFont}."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    fonts = {}
    for name, filename in FILES.items():
        font = TTFont(name, str(FONT_DIR / filename))
        pdfmetrics.registerFont(font)
        fonts[name] = font
    addMapping(REGULAR, 0, 0, REGULAR)
    addMapping(REGULAR, 1, 0, BOLD)
    addMapping(REGULAR, 0, 1, ITALIC)
    addMapping(REGULAR, 1, 1, BOLD)
    return fonts


def _covered(font, ch: str) -> bool:
    return ch.isspace() or ord(ch) in font.face.charToGlyph


def markup(text) -> str:
    """`text` escaped for a reportlab Paragraph, with every run of
    characters missing from DejaVu Sans set in the CJK fallback font."""
    fonts = register()
    main = fonts[REGULAR]
    out, run, run_main = [], [], True
    for ch in str(text):
        in_main = _covered(main, ch)
        if run and in_main != run_main:
            out.append(_run("".join(run), run_main))
            run = []
        run.append(ch)
        run_main = in_main
    if run:
        out.append(_run("".join(run), run_main))
    return "".join(out)


def _run(text: str, in_main: bool) -> str:
    return escape(text) if in_main else f'<font name="{FALLBACK}">{escape(text)}</font>'
