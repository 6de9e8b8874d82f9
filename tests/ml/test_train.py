"""Training: the LRA learning-rate adjuster, a tiny real run that lowers the loss, resume, reproducibility."""
from __future__ import annotations

import json

import torch

from ml.checkpoint import read_payload
from ml.train import LearningRateAdjuster, TrainConfig, fit_temperature, train


def adjuster(**kwargs):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    messages = []
    return model, LearningRateAdjuster(optimizer, log=messages.append, **kwargs), messages


def test_lra_watches_training_accuracy_below_the_threshold_then_validation_loss():
    model, lra, log = adjuster(threshold=0.9, patience=1, factor=0.5, stop_patience=5)
    lra.step(0, model, train_accuracy=0.5, val_loss=9.0)
    lra.step(1, model, train_accuracy=0.4, val_loss=0.1)  # accuracy fell: reduce, although val loss improved
    assert lra.lr == 0.5
    assert "train accuracy did not improve" in log[-1]
    lra.step(2, model, train_accuracy=0.95, val_loss=1.0)  # above threshold: now val loss is watched
    assert "val loss improved" in log[-1]
    lra.step(3, model, train_accuracy=0.99, val_loss=1.5)
    assert lra.lr == 0.25 and "val loss did not improve" in log[-1]


def test_lra_restores_best_weights_when_it_lowers_the_rate_and_stops_after_patience():
    model, lra, log = adjuster(threshold=0.0, patience=1, factor=0.1, stop_patience=2)
    lra.step(0, model, 1.0, val_loss=1.0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(5.0)
    assert lra.step(1, model, 1.0, val_loss=2.0) is False
    assert torch.equal(model.weight, best["weight"]), "weights were not restored"
    assert "restored from epoch 1 " in log[-1]
    assert lra.step(2, model, 1.0, val_loss=3.0) is True
    assert "early stop" in log[-1]


def test_temperature_scaling_softens_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (300,))
    logits = torch.nn.functional.one_hot(labels, 3).float() * 10
    flipped = torch.rand(300) < 0.3  # 30% wrong with huge confidence
    logits[flipped] = logits[flipped].roll(1, dims=1)
    assert fit_temperature(logits, labels) > 1.5


def test_a_tiny_training_run_lowers_the_loss_and_writes_a_usable_model(tiny_model_file):
    out = tiny_model_file.parent
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    log = (out / "train.log").read_text()
    assert "LRA epoch 1:" in log and "training done" in log
    payload = read_payload(tiny_model_file)
    assert payload["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert payload["training"]["manifest_sha256"]
    assert (out / "manifest.csv").is_file() and (out / "last.pt").is_file()


def test_resume_continues_from_the_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path, smear_folder):
    common = dict(data=str(smear_folder), arch="mobilenetv3_lstm", batch_size=16, img_size=48, block_size=4,
                  progress=False, limit_per_class=8, seed=7)
    straight = train(TrainConfig(out=str(tmp_path / "straight"), epochs=2, **common))
    train(TrainConfig(out=str(tmp_path / "split"), epochs=1, **common))
    resumed = train(TrainConfig(out=str(tmp_path / "split"), epochs=2, **common), resume=True)
    assert "resumed from" in (tmp_path / "split" / "train.log").read_text()
    a, b = read_payload(straight)["training"]["history"], read_payload(resumed)["training"]["history"]
    assert len(a) == len(b) == 2
    assert abs(a[-1]["train_loss"] - b[-1]["train_loss"]) < 1e-4, "resumed run diverged from the uninterrupted one"


def test_distillation_from_a_teacher_trained_on_the_same_split(tiny_model_file, smear_folder, tmp_path):
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "student"), epochs=1,
                         batch_size=16, img_size=64, progress=False, manifest=str(tiny_model_file.parent / "manifest.csv"),
                         teacher=str(tiny_model_file))
    model = train(config)
    assert "distillation: teacher" in (tmp_path / "student" / "train.log").read_text()
    assert read_payload(model)["training"]["config"]["teacher"] == str(tiny_model_file)


def test_several_teachers_give_the_mean_of_their_soft_labels(tiny_model_file, tmp_path):
    import shutil

    from ml.checkpoint import update_payload
    from ml.distill import one_teacher_soft_targets, teacher_soft_targets

    other = tmp_path / "other_teacher.pt"
    shutil.copy(tiny_model_file, other)
    state = {k: v + 0.3 * torch.randn_like(v.float()).to(v.dtype) if v.dim() > 1 else v  # weights, not statistics
             for k, v in read_payload(other)["state_dict"].items()}
    update_payload(other, state_dict=state)

    class Images:
        images = torch.rand(5, 3, 64, 64)

        def __len__(self):
            return 5

    config = TrainConfig(data="unused", arch="mobilenetv3_lstm", out=str(tmp_path), progress=False,
                         manifest=str(tiny_model_file.parent / "manifest.csv"),
                         teacher=[str(tiny_model_file), str(other)])
    classes = read_payload(tiny_model_file)["classes"]
    first, second = (one_teacher_soft_targets(config, str(f), Images(), classes, print)[0] for f in (tiny_model_file, other))
    mean = teacher_soft_targets(config, Images(), classes, print)
    assert not torch.allclose(first, second), "the two teachers should disagree somewhere"
    assert torch.allclose(mean, (first + second) / 2)
    assert torch.allclose(mean.sum(dim=1), torch.ones(5))
    assert len(config.extra["ancestors"]["teachers"]) == 2  # the card names each teacher


def test_a_teacher_from_another_split_is_refused(tiny_model_file, smear_folder, tmp_path):
    import pytest

    from ml import data

    other = data.make_split(smear_folder, block_size=4, seed=99)
    manifest = data.write_manifest(other, tmp_path / "other.csv")
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "student"), epochs=1,
                         img_size=64, progress=False, manifest=str(manifest), teacher=str(tiny_model_file))
    with pytest.raises(ValueError, match="another split"):
        train(config)


def test_init_weights_starts_from_a_model_of_the_same_split(tiny_model_file, smear_folder, tmp_path):
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "warm"), epochs=0,
                         img_size=64, progress=False, manifest=str(tiny_model_file.parent / "manifest.csv"),
                         init_weights=str(tiny_model_file))
    warm = read_payload(train(config))["state_dict"]
    source = read_payload(tiny_model_file)["state_dict"]
    assert all(torch.equal(warm[k], source[k]) for k in warm)


def test_the_card_names_the_init_model_as_it_was_when_training_read_it(tiny_model_file, smear_folder, tmp_path):
    import shutil

    from ml.card import lineage

    init = tmp_path / "staging.pt"  # stands for ml/weights/staging.pt, which shipping later overwrites
    shutil.copy(tiny_model_file, init)
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "warm"), epochs=0,
                         img_size=64, progress=False, manifest=str(tiny_model_file.parent / "manifest.csv"),
                         init_weights=str(init))
    warm = train(config)
    original_version = read_payload(tiny_model_file)["model_version"]
    shutil.copy(warm, init)  # "shipped": the init file now holds the new model
    training = read_payload(warm)["training"]
    assert training["ancestors"]["init_weights"]["model_version"] == original_version
    (line,) = lineage(training["config"], training["ancestors"])
    assert original_version in line and read_payload(warm)["model_version"] not in line


def test_the_card_names_every_teacher_of_an_ensemble_distillation(tiny_model_file):
    from ml.card import lineage
    from ml.checkpoint import model_summary

    first = model_summary(read_payload(tiny_model_file))
    second = {**first, "model_version": "teacher-two"}
    config = {"teacher": ["runs/a.pt", "runs/b.pt"], "distill_alpha": 0.5, "distill_temperature": 2.0}
    (line,) = lineage(config, {"teachers": [first, second]})
    assert "2 teachers, their probabilities averaged" in line
    assert first["model_version"] in line and "teacher-two" in line


def test_the_cards_train_command_passes_several_teachers_as_separate_arguments():
    from ml.card import train_command

    config = {"data": "DATA", "arch": "efficientnet_lite0_bigru", "out": "runs/s", "manifest": "m.csv",
              "teacher": ["runs/a.pt", "runs/b.pt"]}
    assert train_command(config).endswith("--teacher runs/a.pt runs/b.pt")


def test_an_ema_run_ships_the_averaged_weights_and_validates_them_each_epoch(tmp_path, smear_folder):
    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "ema"), epochs=2,
                         batch_size=16, img_size=48, block_size=4, progress=False, limit_per_class=8, seed=3,
                         ema_decay=0.9)
    shipped = read_payload(train(config))
    last = torch.load(tmp_path / "ema" / "last.pt", map_location="cpu", weights_only=False)
    weights = {k: v for k, v in shipped["state_dict"].items() if v.is_floating_point()}
    assert all(torch.allclose(weights[k].float(), last["ema"][k].float()) for k in weights)
    assert any(not torch.allclose(weights[k].float(), last["model"][k].float()) for k in weights), \
        "the shipped weights are the raw ones, not their average"
    assert all("ema_val_acc" in epoch for epoch in shipped["training"]["history"])
    assert shipped["training"]["best_epoch"] == 1  # the average after the last epoch, whatever LRA thought best
    assert "EMA val loss" in (tmp_path / "ema" / "train.log").read_text()


def test_an_ema_run_resumed_from_a_run_without_the_average_starts_it_from_the_resumed_weights(tmp_path, smear_folder):
    common = dict(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "run"), batch_size=16,
                  img_size=48, block_size=4, progress=False, limit_per_class=8, seed=3)
    train(TrainConfig(epochs=1, **common))
    resumed = read_payload(train(TrainConfig(epochs=2, ema_decay=0.9, **common), resume=True))
    assert len(resumed["training"]["history"]) == 2 and "ema_val_acc" in resumed["training"]["history"][-1]


def test_the_card_says_the_shipped_weights_are_an_average_and_its_command_asks_for_one():
    from ml.card import lineage, train_command

    config = {"data": "d", "arch": "a", "out": "o", "manifest": "m.csv", "ema_decay": 0.995}
    assert "--ema-decay 0.995" in train_command(config)
    assert any("exponential moving average" in line for line in lineage(config))
    assert not any("moving average" in line for line in lineage({**config, "ema_decay": 0.0}))
