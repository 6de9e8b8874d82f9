"""ml.card: shipping writes the model card, describes the model's lineage and times it against the model it
replaces."""


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
    assert "Uncertainty: the " in card.read_text() and "95% interval" in card.read_text()
    card.write_text(card.read_text() + "\n## Why this architecture\n- Written by a person.\n")

    second = with_test_time_flips(first, tmp_path / "second.pt")
    evaluate(str(second), smear_folder, out=tmp_path / "eval-second")
    text = ml.card.ship(second, tmp_path / "eval-second", "staging", image).read_text()
    assert "- Written by a person." in text
    assert "Against the model it replaced (`" + read_payload(first)["model_version"] + "`)" in text
    assert "median ratio" in text
