"""ml.card_file: a model card written again for new weights keeps what a person wrote into it."""
from ml.card_file import keep_hand_written

OLD = """# Card
## Architecture
- old generated text.
## Training
- Warm start: every weight initialised from `model-a` (9 epochs), then fine-tuned 6 epochs; chosen on validation.
- 6 epochs run.
## Heat maps and calibration
- Greedy deletion, measured by hand.
## Why this architecture
- Reasons.
## Domain check
- Old weights' check.
## ONNX Runtime
- Old weights' export.
## Limitations
- Old limits.
"""

NEW = """# Card
## Architecture
- new generated text.
## Training
- Warm start: every weight initialised from `model-a` (9 epochs).
- 7 epochs run.
## Limitations
- New limits.
"""


def test_sections_written_by_hand_are_kept_in_their_place():
    card, kept = keep_hand_written(OLD, NEW)
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    assert headings == ["## Architecture", "## Training", "## Heat maps and calibration", "## Why this architecture",
                        "## Limitations"]
    assert "- Greedy deletion, measured by hand." in card and "- Reasons." in card
    assert any("Why this architecture" in k for k in kept)


def test_generated_sections_come_from_the_new_card():
    card, _ = keep_hand_written(OLD, NEW)
    assert "- new generated text." in card and "- old generated text." not in card
    assert "- 7 epochs run." in card and "- 6 epochs run." not in card
    assert "- New limits." in card and "- Old limits." not in card


def test_a_generated_line_extended_by_hand_keeps_its_extension():
    card, kept = keep_hand_written(OLD, NEW)
    assert "- Warm start: every weight initialised from `model-a` (9 epochs), then fine-tuned 6 epochs; chosen on " \
           "validation." in card
    assert any("Warm start" in k for k in kept)


def test_sections_other_commands_write_are_not_inherited_from_the_old_weights():
    card, _ = keep_hand_written(OLD, NEW)
    assert "Domain check" not in card and "ONNX Runtime" not in card


def test_a_card_with_nothing_written_by_hand_is_the_generated_one():
    card, kept = keep_hand_written(NEW, NEW)
    assert card == NEW and kept == []


def test_writing_over_an_existing_card_keeps_and_names_its_hand_written_sections(tmp_path, capsys):
    from ml.card_file import write_card

    card = tmp_path / "staging.md"
    card.write_text(OLD)
    write_card(card, NEW)
    assert "## Why this architecture" in card.read_text()
    assert "to be checked against the new weights" in capsys.readouterr().out
    fresh = tmp_path / "new.md"
    write_card(fresh, NEW)
    assert fresh.read_text() == NEW


def test_the_export_section_of_the_same_weights_is_kept_when_the_card_is_written_again():
    old = OLD.replace("- Old weights' export.", "- Exported from this model file (sha256 `abc123`).")
    card, _ = keep_hand_written(old, NEW, weights_sha256="abc123")
    assert "## ONNX Runtime" in card and "sha256 `abc123`" in card
    card, _ = keep_hand_written(old, NEW, weights_sha256="other")
    assert "## ONNX Runtime" not in card
