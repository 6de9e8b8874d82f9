"""A model card as a file: its '## ' sections rewritten one at a time, and written again for new weights
without losing what a person wrote into it (``write_card``). ``ml.card`` and ``ml.screening_card`` make the
text; the commands that measure something (fit-domain, export, robustness) rewrite their own section."""
from __future__ import annotations

from pathlib import Path

from . import data as mldata


def with_section(text: str, heading: str, section: str, before: str = "## Limitations") -> str:
    """``text`` (a model card) with one '## ' section rewritten (from its heading to the next one), or
    inserted before ``before`` (or at the end) when the card has none yet."""
    lines = text.splitlines()
    new = section.rstrip("\n").splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new + [""]
    elif before in lines:
        at = lines.index(before)
        lines[at:at] = new + [""]
    else:
        lines += [""] + new
    return "\n".join(lines).rstrip("\n") + "\n"


def replace_section(card: str | Path, heading: str, text: str, before: str = "## Limitations") -> Path:
    """Rewrite one '## ' section of a model card file (``with_section``)."""
    card = Path(card)
    card.write_text(with_section(card.read_text(), heading, text, before))
    return card


def _sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(heading, its lines without the heading) for every '## ' section, in order; the text before the first
    heading comes under the heading ""."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in lines:
        if line.startswith("## "):
            sections.append((line, []))
        else:
            sections[-1][1].append(line)
    return sections


# Sections other commands write from their reports (fit-domain, export, robustness): a card for new weights
# must not inherit the old weights' ones.
MACHINE_WRITTEN = ("## Domain check", "## ONNX Runtime", "## Robustness to acquisition changes")


def keep_hand_written(old: str, new: str, weights_sha256: str | None = None) -> tuple[str, list[str]]:
    """The generated card ``new`` with what a person wrote into the card ``old`` it replaces: every '## '
    section the generator does not write (placed before the heading that followed it in ``old``), and every
    generated line a person extended (the old line starts with the generated one less its full stop).

    Shipping new weights rewrites the card from the reports; the reasons and records written by hand
    (why this architecture, how the heat maps were chosen) would otherwise be lost with each ship. They are
    kept, not rewritten, so they are named in the second value to be checked against the new weights."""
    old_sections = _sections(old.splitlines())
    new_sections = _sections(new.splitlines())
    generated = {heading for heading, _ in new_sections}
    kept: list[str] = []
    old_lines = [line for _, body in old_sections for line in body if line.startswith("- ")]
    for heading, body in new_sections:
        for i, line in enumerate(body):
            stem = line.rstrip(".")
            if not line.startswith("- ") or len(stem) < 12:
                continue
            extended = [o for o in old_lines if o != line and o.startswith(stem) and len(o) > len(line)]
            if len(extended) == 1:
                body[i] = extended[0]
                kept.append(f"the extended line '{stem[:40]}…' under {heading[3:]}")
    headings = [heading for heading, _ in old_sections]
    for position, (heading, body) in enumerate(old_sections):
        if not heading or heading in generated:
            continue
        if heading in MACHINE_WRITTEN and not (weights_sha256 and any(weights_sha256 in line for line in body)):
            continue
        after = next((h for h in headings[position + 1:] if h in generated), None)
        at = next((i for i, (n, _) in enumerate(new_sections) if n == after), len(new_sections))
        new_sections.insert(at, (heading, body))
        generated.add(heading)
        kept.append(f"the section '{heading[3:]}'")
    lines = [line for heading, body in new_sections for line in ([heading] if heading else []) + body]
    return "\n".join(lines).rstrip("\n") + "\n", kept


def write_card(path: Path, text: str, weights_sha256: str | None = None) -> Path:
    """Write a generated model card over ``path``, keeping what a person wrote into the card it replaces
    (``keep_hand_written``); what was kept is printed, to be checked against the new weights."""
    if path.is_file():
        text, kept = keep_hand_written(path.read_text(), text, weights_sha256)
        if kept:
            print(f"{path}: kept from the card it replaces, to be checked against the new weights: " + "; ".join(kept))
    path.write_text(text)
    return path


def refresh_weights_line(card: str | Path, weights: str | Path) -> None:
    """Keep the card's size and sha256 of the weights file true after the file was updated in place."""
    import re

    card, weights = Path(card), Path(weights)
    text = card.read_text()
    text = re.sub(r"sha256 `[0-9a-f]{64}`", f"sha256 `{mldata.sha256_file(weights)}`", text, count=1)
    text = re.sub(r"\(\d+\.\d+ MB\)", f"({weights.stat().st_size / 1e6:.2f} MB)", text, count=1)
    card.write_text(text)


def copy_weights(source: str | Path, target: Path, sha256: str) -> Path:
    """Copy the weights a report was made with to ``target``; refuse when the copy is not the reported file."""
    import shutil

    shutil.copyfile(source, target)
    if mldata.sha256_file(target) != sha256:
        raise ValueError("the report was made with other weights than the ones being shipped")
    return target
