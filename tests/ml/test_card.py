"""ml.card: shipping new weights rewrites the model card without losing what a person wrote into it."""
from ml.card import keep_hand_written

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


def test_shipping_over_an_existing_card_keeps_and_names_its_hand_written_sections(tmp_path, capsys):
    from ml.card import write_card

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


def test_a_warm_start_file_that_is_now_the_described_model_is_not_described_as_its_ancestor(tiny_model_file):
    from ml.card import describe_model_file
    from ml.checkpoint import model_summary, read_payload

    version = model_summary(read_payload(tiny_model_file))["model_version"]
    assert version in describe_model_file(str(tiny_model_file))
    text = describe_model_file(str(tiny_model_file), None, own_versions=(version,))
    assert version not in text and "shipped over it" in text


def test_ship_writes_the_card_keeps_hand_written_text_and_times_the_new_model_against_the_one_it_replaces(
        tiny_model_file, smear_folder, tmp_path, monkeypatch):
    import shutil

    import ml.card
    from ml.checkpoint import read_payload, with_test_time_flips
    from ml.evaluate import evaluate

    monkeypatch.setattr(ml.card, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(ml.card, "REPORTS_DIR", tmp_path / "reports")
    image = next((smear_folder / "Pre").iterdir())
    first = tmp_path / "first.pt"
    shutil.copyfile(tiny_model_file, first)
    evaluate(str(first), smear_folder, out=tmp_path / "eval-first")
    card = ml.card.ship(first, tmp_path / "eval-first", "staging", image)
    assert "## Speed" in card.read_text() and "Against the model it replaced" not in card.read_text()
    card.write_text(card.read_text() + "\n## Why this architecture\n- Written by a person.\n")

    second = with_test_time_flips(first, tmp_path / "second.pt")
    evaluate(str(second), smear_folder, out=tmp_path / "eval-second")
    text = ml.card.ship(second, tmp_path / "eval-second", "staging", image).read_text()
    assert "- Written by a person." in text
    assert "Against the model it replaced (`" + read_payload(first)["model_version"] + "`)" in text
    assert "median ratio" in text


def test_paired_latency_alternates_the_two_models_and_reports_each_rounds_ratio(tiny_model_file, smear_folder):
    from ml.predict import Predictor
    from ml.profile import paired_latency

    image = next((smear_folder / "Pre").iterdir())
    model = Predictor(tiny_model_file)
    paired = paired_latency(model, model, image, rounds=3, runs=5)
    assert len(paired["ratios"]) == len(paired["ms"]) == len(paired["reference_ms"]) == 3
    assert paired["ratios"] == [m / r for m, r in zip(paired["ms"], paired["reference_ms"])]
    assert sorted(paired["ratios"])[1] == paired["median_ratio"]
