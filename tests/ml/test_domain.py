"""The domain check: every prediction says whether the image is like the model's training images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import ml
from ml import data as mldata
from ml.runtime import domain as mldomain
from ml.checkpoint import read_payload, update_payload
from ml.domain_eval import evaluate_domain, generated_images, markdown_section
from ml.domain_fit import fit_model_domain
from ml.predict import Predictor

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def draw_cell(seed: int, size: int = 64) -> Image.Image:
    """A segmented single cell: one purple disc on a black background (the C-NMC look)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (0, 0, 0))
    from PIL import ImageDraw

    r = int(rng.integers(size // 4, size // 3))
    c = size // 2 + int(rng.integers(-4, 5))
    ImageDraw.Draw(image).ellipse([c - r, c - r, c + r, c + r], fill=(120 + int(rng.integers(-20, 20)), 60, 160))
    return image


@pytest.fixture(scope="module")
def fitted_model(tiny_model_file, smear_folder, tmp_path_factory) -> Path:
    """A copy of the tiny model with its domain check fitted on its own splits and generated cells."""
    folder = tmp_path_factory.mktemp("domain")
    path = folder / "model.pt"
    shutil.copy(tiny_model_file, path)
    cells = []
    for i in range(30):
        cells.append(folder / f"cell-{i}.png")
        draw_cell(i).save(cells[-1])
    fit_model_domain(path, smear_folder, None, target_rate=0.01, progress=False, other_paths=cells)
    return path


def test_image_statistics_have_one_value_per_name_and_see_blank_images():
    stats = mldomain.image_statistics(np.full((32, 32, 3), 250, dtype=np.uint8))
    assert stats.shape == (len(mldomain.STAT_NAMES),)
    assert mldomain.is_uniform(stats)
    assert not mldomain.is_uniform(mldomain.image_statistics(np.asarray(draw_cell(0))))


def test_every_result_carries_the_contract_keys(fitted_model, smear_folder):
    predictor = Predictor(fitted_model)
    image = next((smear_folder / "Pre").iterdir())
    [result] = predictor.predict([image])
    assert set(result) >= {"stage", "probabilities", "in_domain", "domain_score"}
    assert isinstance(result["in_domain"], bool)
    assert 0.0 <= result["domain_score"] <= 1.0
    assert ("reason" in result) == (not result["in_domain"])


def test_the_check_runs_its_linear_algebra_on_one_blas_thread(fitted_model, smear_folder, monkeypatch):
    # Idle OpenBLAS threads busy-wait beside the model's threads: 48 ms a prediction instead of 22 ms on 2 cores.
    from threadpoolctl import threadpool_info, threadpool_limits

    predictor = Predictor(fitted_model)
    seen = []
    distance = mldomain.GaussianDistance.distance

    def recording(self, x):
        seen.append({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
        return distance(self, x)

    monkeypatch.setattr(mldomain.GaussianDistance, "distance", recording)
    with threadpool_limits(2, user_api="blas"):  # as a worker has them (the tests run with OMP_NUM_THREADS=1)
        predictor.predict([next((smear_folder / "Pre").iterdir())])
    assert seen and all(threads <= {1} for threads in seen)


def test_most_in_domain_test_images_pass(fitted_model, smear_folder):
    predictor = Predictor(fitted_model)
    manifest = predictor.payload["training"]["config"]["manifest"]
    report = evaluate_domain(predictor, smear_folder, manifest, "test")
    own = report["rows"][0]
    assert own["in_domain_set"] and own["n"] > 0
    assert own["flagged_rate"] <= 0.25  # a tiny model on 64 generated images; the real rates are in the cards


def test_blank_noise_and_text_images_are_flagged_with_a_reason(fitted_model):
    predictor = Predictor(fitted_model)
    blank, noise, text = (generated_images(kind, n=6) for kind in ("blank", "noise", "text"))
    results = predictor.predict(blank + noise + text)
    assert all(not r["in_domain"] for r in results)
    assert {r["reason"] for r in results[:6]} == {"blank or nearly uniform image"}
    assert all(r["reason"] for r in results)
    assert all(r["stage"] in ml.STAGES for r in results)  # the label stays, for transparency


def test_the_other_kind_is_named(fitted_model, tmp_path):
    """A single segmented cell given to the staging model is caught and called a cell."""
    predictor = Predictor(fitted_model)
    results = predictor.predict([draw_cell(100 + i) for i in range(5)])
    assert all(not r["in_domain"] for r in results)
    assert all("single segmented cell" in r["reason"] for r in results)


def test_the_cut_is_read_from_the_model_file(fitted_model, smear_folder, tmp_path):
    stored = read_payload(fitted_model)["domain"]
    assert Predictor(fitted_model).domain.cut == pytest.approx(stored["cut"])
    assert stored["fit"]["target_false_flag_rate"] == 0.01
    strict = tmp_path / "strict.pt"
    shutil.copy(fitted_model, strict)
    update_payload(strict, domain={**stored, "cut": 1.01})  # no score reaches it: everything is flagged
    image = next((smear_folder / "Early").iterdir())
    [result] = Predictor(strict).predict([image])
    assert result["in_domain"] is False
    assert result["reason"] == "colours and texture unlike any training smear"


def test_a_model_without_a_fitted_check_applies_the_blank_rule_only(tiny_model_file, smear_folder):
    predictor = Predictor(tiny_model_file)
    assert predictor.domain is None
    blank, smear = predictor.predict([Image.new("RGB", (64, 64), "white"), next((smear_folder / "Pro").iterdir())])
    assert (blank["in_domain"], blank["reason"]) == (False, "blank or nearly uniform image")
    assert smear["in_domain"] is True


def test_predict_cli_json_lines_carry_the_verdict(fitted_model, smear_folder, tmp_path, capsys):
    from ml.cli import main

    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (300, 200), (255, 255, 255)).save(blank)
    assert main(["predict", "--json", "--model", str(fitted_model), str(blank)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["in_domain"] is False and line["reason"] == "blank or nearly uniform image"
    assert isinstance(line["domain_score"], float) and "stage" in line and "probabilities" in line


def test_card_section_tabulates_every_set_against_its_target(fitted_model, smear_folder):
    predictor = Predictor(fitted_model)
    report = evaluate_domain(predictor, smear_folder, predictor.payload["training"]["config"]["manifest"], "test")
    section = markdown_section(report)
    assert section.startswith("## Domain check")
    for row in report["rows"]:
        assert f"| {row['set']} | {row['n']} |" in section
    assert "flagged <= 2%" in section and "answered <= 5%" in section


def test_card_section_states_the_greyscale_margin_of_this_models_own_training_images(fitted_model, smear_folder):
    import numpy as np

    predictor = Predictor(fitted_model)
    report = evaluate_domain(predictor, smear_folder, predictor.payload["training"]["config"]["manifest"], "test")
    least = report["fit"]["min_train_saturation"]
    assert 0.01 <= least <= 1 and np.isfinite(least)
    assert f"(the least saturated training image has {least:.3f})" in markdown_section(report)
    del report["fit"]["min_train_saturation"]  # a check fitted before the margin was recorded states none
    assert "least saturated" not in markdown_section(report)


# --------------------------------------------------------------------------- the shipped models, real images

def _real(folder: str) -> Path:
    path = SHARED / folder
    if not path.is_dir():
        pytest.skip(f"real images not present at {path} (the shared data set is only on CI and dev machines)")
    return path


def _first(manifest: str, split: str, label: str | None = None) -> str:
    from ml.data import read_manifest

    return next(s.path for s in read_manifest(REPO / "ml" / "splits" / manifest)
                if s.split == split and (label is None or s.label == label))


def test_shipped_staging_model_accepts_a_real_field_and_names_a_real_cell():
    fields, cells = _real("taleqani-all"), _real("cnmc-fold1")
    predictor = ml.load_predictor("staging")
    assert predictor.domain is not None, "the shipped staging model has a fitted domain check"
    field, cell = predictor.predict([fields / _first("taleqani-all.csv", "test", "Pre"),
                                     cells / _first("cnmc-fold1.csv", "test")])
    assert field["in_domain"] is True
    assert cell["in_domain"] is False and "single segmented cell" in cell["reason"]


def test_shipped_screening_model_accepts_a_real_cell_and_names_a_real_field():
    fields, cells = _real("taleqani-all"), _real("cnmc-fold1")
    predictor = ml.load_predictor("screening")
    assert predictor.domain is not None, "the shipped screening model has a fitted domain check"
    cell, field = predictor.predict([cells / _first("cnmc-fold1.csv", "test", "hem"),
                                     fields / _first("taleqani-all.csv", "test")])
    assert cell["in_domain"] is True
    assert field["in_domain"] is False and "not a single segmented cell" in field["reason"]


def test_a_wide_embedding_gets_the_same_gaussian_without_the_full_covariance_matrix():
    from ml import domain_fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 90)) @ rng.normal(size=(90, 90))  # 90 dimensions, 40 images: an ensemble's case
    labels = rng.integers(0, 2, 40)
    wide = domain_fit.fit_gaussian(x, labels, max_components=16)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    means = np.stack([z[labels == c].mean(axis=0) for c in (0, 1)])
    residual = z - means[labels]
    from sklearn.covariance import LedoitWolf

    eigenvalues, vectors = np.linalg.eigh(LedoitWolf(assume_centered=True).fit(residual).covariance_)
    order = np.argsort(eigenvalues)[::-1]
    assert np.allclose(wide.eigenvalues, eigenvalues[order][:16], rtol=1e-6)
    assert np.isclose(wide.residual_variance, eigenvalues[order][16:].mean(), rtol=1e-6)
    # Same subspace (eigenvectors up to sign).
    assert np.allclose(np.abs(np.sum(wide.basis * vectors[:, order][:, :16], axis=0)), 1.0, atol=1e-6)


def test_statistics_under_the_mild_colour_changes_widen_the_check_for_colour_but_not_for_inversion():
    from ml import domain_fit
    from ml.perturb import channel_gains

    rng = np.random.default_rng(1)
    fields = [Image.fromarray(rng.integers(110, 230, (48, 48, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(1))
              for _ in range(40)]
    stats = np.stack([mldomain.image_statistics(np.asarray(f)) for f in fields])
    extra = np.stack([mldomain.image_statistics(np.asarray(change(f)))
                      for f in fields for change in domain_fit.COLOUR_CHANGES()])
    embeddings = rng.normal(size=(40, 8))
    narrow = domain_fit.fit("staging", embeddings, np.zeros(40, int), stats, embeddings, stats)
    wide = domain_fit.fit("staging", embeddings, np.zeros(40, int), stats, embeddings, stats, extra_stats=extra)
    darker = mldomain.image_statistics(np.asarray(channel_gains(0.85, 0.85, 0.85)(fields[0])))[None]
    inverted = mldomain.image_statistics(255 - np.asarray(fields[0]))[None]
    assert wide.stats.distance(darker)[0] < narrow.stats.distance(darker)[0]
    assert wide.stats.distance(inverted)[0] > wide.stats_reference.max()  # still far beyond every validation image


def test_embeddings_under_the_mild_changes_widen_the_check_along_them_but_not_elsewhere():
    """A model trained to handle a change moves its embedding along it: fitted on training images clean and
    changed (and calibrated on validation images clean and changed), the check lets such an image through,
    while an embedding as far out in another direction is still refused."""
    from ml import domain_fit

    rng = np.random.default_rng(2)
    shift = np.zeros(8)
    shift[0] = 6.0  # the direction a mild change moves the embedding
    train, val, changed_val = rng.normal(size=(200, 8)), rng.normal(size=(100, 8)), rng.normal(size=(100, 8)) + shift
    stats = rng.normal(size=(200, len(mldomain.STAT_NAMES)))
    for name in ("luminance_std", "mean_saturation"):  # textured, coloured fields: the quality rules pass them
        stats[:, mldomain.STAT_NAMES.index(name)] += 50
    train_changed = domain_fit.UnderChanges(rng.normal(size=(200, 8)) + shift, stats, np.zeros(200, int), ["brighter"] * 200)
    val_changed = domain_fit.UnderChanges(changed_val, stats[:100], np.full(100, -1), ["brighter"] * 100)
    narrow = domain_fit.fit("staging", train, np.zeros(200, int), stats, val, stats[:100])
    wide = domain_fit.fit("staging", train, np.zeros(200, int), stats, val, stats[:100],
                          train_changed=train_changed, val_changed=val_changed)
    changed_test = rng.normal(size=(50, 8)) + shift
    elsewhere = rng.normal(size=(50, 8))
    elsewhere[:, 1] += 6.0

    def flagged(check, embeddings):
        return np.mean([not r["in_domain"] for r in check.score(embeddings, stats[:50])])

    assert flagged(narrow, changed_test) > 0.9
    assert flagged(wide, changed_test) < 0.1
    assert flagged(wide, elsewhere) > 0.9
    assert (wide.fit_record["n_val"], wide.fit_record["n_val_changed"]) == (100, 100)
    assert wide.fit_record["val_clean_flagged_rate"] <= wide.fit_record["val_flagged_rate"] + 0.02


def test_images_under_changes_give_one_row_per_image_and_change(tiny_model_file, smear_folder):
    from ml import domain_fit

    predictor = Predictor(tiny_model_file)
    paths = sorted(smear_folder.glob("*/*"))[:3]
    changes = domain_fit.MILD_CHANGES()
    result = domain_fit.under_changes(predictor, paths, [2, 0, 1], changes)
    assert result.embeddings.shape[0] == result.stats.shape[0] == 3 * len(changes)
    assert result.labels.tolist() == [2] * len(changes) + [0] * len(changes) + [1] * len(changes)
    assert result.changes[:len(changes)] == [c.name for c in changes]
    darker = next(c for c in changes if c.name == "darker")
    _, embedding, stats = predictor.predict_outputs([darker(mldata.load_image(paths[1]))])
    row = len(changes) + changes.index(darker)
    assert np.allclose(result.embeddings[row], embedding[0], atol=1e-5)
    assert np.allclose(result.stats[row], stats[0])


ACQUISITION_AUGMENTATION = dict(stain_augment="hed", blur_prob=0.4, jpeg_prob=0.3, downscale_prob=0.3, crop_prob=0.3)


def test_only_a_model_trained_under_the_acquisition_augmentation_counts_as_handling_the_changes():
    from ml.domain_fit import trained_under_changes

    def payload(input_norm="image", epochs=6, **config):
        return {"input_norm": input_norm, "training": {"config": {"epochs": epochs, **config}}}

    assert trained_under_changes(payload(**ACQUISITION_AUGMENTATION))
    assert not trained_under_changes(payload(input_norm="imagenet", **ACQUISITION_AUGMENTATION))
    assert not trained_under_changes(payload(epochs=0))  # the screening probe: frozen features, no augmentation
    assert not trained_under_changes(payload(**{**ACQUISITION_AUGMENTATION, "jpeg_prob": 0.0}))


def test_a_model_trained_under_the_changes_gets_a_check_fitted_under_them(smear_folder, tmp_path):
    from ml import domain_fit
    from ml.train import TrainConfig, train

    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "run"), epochs=1,
                         batch_size=16, img_size=48, block_size=4, progress=False, input_norm="image",
                         **ACQUISITION_AUGMENTATION)
    path = train(config)
    check = fit_model_domain(path, smear_folder, None, progress=False)
    record = check.fit_record
    assert record["embedding_under_changes"] == sorted(c.name for c in domain_fit.MILD_CHANGES())
    assert record["n_train_changed"] > 0 and record["n_val_changed"] > 0
    assert len(check.feature_reference) == record["n_val"] + record["n_val_changed"]
    assert Predictor(path).domain.cut == pytest.approx(check.cut)  # written into the file


def test_a_model_that_only_standardises_each_image_gets_its_statistics_widened_for_colour_only(
        image_norm_model, smear_folder, tmp_path):
    from ml import domain_fit

    path = tmp_path / "model.pt"
    shutil.copy(image_norm_model, path)
    check = fit_model_domain(path, smear_folder, None, progress=False, write=False)
    record = check.fit_record
    assert record["statistics_under_changes"] == [c.name for c in domain_fit.COLOUR_CHANGES()]
    assert record["embedding_under_changes"] == [] and record["n_val_changed"] == 0
    assert len(check.feature_reference) == record["n_val"]


def test_a_greyscale_field_is_refused_for_having_no_colour_but_a_pale_one_is_not(tiny_model_file, smear_folder):
    """The rule needs no fitted check: it applies to every model file, before the distances."""
    from PIL import ImageEnhance, ImageOps

    predictor = Predictor(tiny_model_file)
    field = mldata.load_image(next((smear_folder / "Pre").iterdir()))
    grey, pale = ImageOps.grayscale(field).convert("RGB"), ImageEnhance.Color(field).enhance(0.5)
    grey_result, pale_result = predictor.predict([grey, pale])
    assert (grey_result["in_domain"], grey_result["reason"]) == (False, mldomain.REASONS["colourless"])
    assert pale_result["in_domain"] is True
    assert mldomain.is_colourless(mldomain.image_statistics(np.asarray(grey)))


def test_shipping_writes_the_domain_section_of_its_own_check_only(fitted_model, smear_folder, tmp_path):
    from ml.card import domain_section

    predictor = Predictor(fitted_model)
    report = evaluate_domain(predictor, smear_folder, predictor.payload["training"]["config"]["manifest"], "test")
    assert report["model_sha256"] == mldata.sha256_file(fitted_model)
    assert domain_section(tmp_path, report["model_sha256"]) == ""  # no report in the folder: nothing to write
    (tmp_path / "domain.json").write_text(json.dumps(report))
    assert domain_section(tmp_path, report["model_sha256"]).startswith("## Domain check")
    with pytest.raises(ValueError, match="other weights"):
        domain_section(tmp_path, "0" * 64)  # a check refitted after the report was made
