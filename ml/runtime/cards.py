"""The shipped models' cards (``ml/weights/NAME.md``), read for the portal's model pages: what each model is
for, its version, its measured numbers and limitations, as the card states them. Text only: no torch, no Django.

A card links its figures and records as paths in the repository (``../reports/...``). The portal serves only
the PNG figures a card shows, found under ``ml/reports`` (``ModelCard.figures``, addressed by their position);
``ModelCard.for_web`` rewrites the card so that figures point where the caller serves them and every other
repository link becomes plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .loader import SHIPPED, WEIGHTS_DIR

REPORTS_DIR = WEIGHTS_DIR.parent / "reports"
_VERSION = re.compile(r"^Version `([^`\n]+)`", re.M)
_SHA256 = re.compile(r"sha256 `([0-9a-f]{64})`")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^()\s]+)\)")
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^()\s]+)\)")
_SECTION = re.compile(r"^## +(.+?) *$", re.M)


@dataclass(frozen=True)
class ModelCard:
    name: str
    markdown: str
    path: Path

    @property
    def version(self) -> str:
        found = _VERSION.search(self.markdown)
        return found.group(1) if found else ""

    @property
    def sha256(self) -> str:
        found = _SHA256.search(self.markdown)
        return found.group(1) if found else ""

    @property
    def title(self) -> str:
        first = self.markdown.lstrip().splitlines()[0] if self.markdown.strip() else ""
        return first.lstrip("#").strip() or f"Model card: {self.name}"

    @property
    def purpose(self) -> str:
        """The paragraph after the version line: what the model does and is for."""
        lines = self.markdown.splitlines()
        start = next((i for i, line in enumerate(lines) if _VERSION.match(line)), None)
        if start is None:
            return ""
        paragraph = []
        for line in lines[start + 1:]:
            if line.startswith("#") or (not line.strip() and paragraph):
                break
            if line.strip():
                paragraph.append(line.strip())
        return " ".join(paragraph)

    def section(self, heading: str) -> str:
        """The markdown under ``## heading`` up to the next ``## `` heading, without the heading; "" if absent."""
        matches = list(_SECTION.finditer(self.markdown))
        for i, match in enumerate(matches):
            if match.group(1) == heading:
                end = matches[i + 1].start() if i + 1 < len(matches) else len(self.markdown)
                return self.markdown[match.end():end].strip()
        return ""

    @property
    def figures(self) -> tuple[Path, ...]:
        """The PNG files the card shows that lie under ml/reports, in order of first appearance. A figure
        outside it, missing or of another type is left out (and shown by ``for_web`` as its caption)."""
        found = []
        for match in _IMAGE.finditer(self.markdown):
            path = self._figure_path(match.group(2))
            if path is not None and path not in found:
                found.append(path)
        return tuple(found)

    def _figure_path(self, target: str) -> Path | None:
        if "://" in target or target.startswith(("/", "\\")) or not target.lower().endswith(".png"):
            return None
        path = (self.path.parent / target).resolve()
        if not path.is_relative_to(REPORTS_DIR.resolve()) or not path.is_file():
            return None
        return path

    def for_web(self, figure_url: Callable[[int], str], markdown: str | None = None) -> str:
        """The card (or a part of it) as markdown for a web page: each figure points at
        ``figure_url(position in figures)``, a figure not served becomes its caption in italics, and a link
        to a file of the repository becomes its text (those files are not served)."""
        figures = self.figures

        def image(match):
            path = self._figure_path(match.group(2))
            if path is None:
                return f"*{match.group(1)}*" if match.group(1) else ""
            return f"![{match.group(1)}]({figure_url(figures.index(path))})"

        def link(match):
            return match.group(0) if match.group(2).startswith("https://") else match.group(1)

        return _LINK.sub(link, _IMAGE.sub(image, self.markdown if markdown is None else markdown))


def read_card(name: str, weights_dir: str | Path | None = None) -> ModelCard | None:
    """The card of shipped model ``name`` (a key of ``loader.SHIPPED``), or None when it has none."""
    if name not in SHIPPED:
        return None
    path = Path(weights_dir or WEIGHTS_DIR) / f"{Path(SHIPPED[name]).stem}.md"
    if not path.is_file():
        return None
    return ModelCard(name=name, markdown=path.read_text(encoding="utf-8"), path=path)


def shipped_cards(weights_dir: str | Path | None = None) -> list[ModelCard]:
    """Every shipped model's card, in the order of ``loader.SHIPPED`` (staging, then screening)."""
    return [card for card in (read_card(name, weights_dir) for name in SHIPPED) if card is not None]
