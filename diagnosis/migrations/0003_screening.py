"""Single-cell screening (#6): Smear.kind, and a Prediction that holds either
model's output (label + {class: probability} + threshold) instead of the four
fixed staging columns. Existing predictions are copied into the new fields
before the old columns are dropped."""
from django.db import migrations, models

#: The old staging columns, in the staging model's class order.
OLD_COLUMNS = (("Benign", "prob_benign"), ("Early", "prob_early"), ("Pre", "prob_pre"), ("Pro", "prob_pro"))


def copy_stage_columns(apps, schema_editor):
    """Forward: label <- stage, probabilities <- the four columns."""
    Prediction = apps.get_model("diagnosis", "Prediction")
    for prediction in Prediction.objects.using(schema_editor.connection.alias).all().iterator():
        prediction.task = "staging"
        prediction.label = prediction.stage
        prediction.probabilities = {label: getattr(prediction, column) for label, column in OLD_COLUMNS}
        prediction.threshold = None
        prediction.save(update_fields=["task", "label", "probabilities", "threshold"])


def restore_stage_columns(apps, schema_editor):
    """Backward: only staging predictions fit the old four columns."""
    Prediction = apps.get_model("diagnosis", "Prediction")
    predictions = Prediction.objects.using(schema_editor.connection.alias)
    if predictions.exclude(task="staging").exists():
        raise RuntimeError("Screening predictions exist; they do not fit the old staging columns.")
    for prediction in predictions.all().iterator():
        prediction.stage = prediction.label
        for label, column in OLD_COLUMNS:
            setattr(prediction, column, float(prediction.probabilities.get(label, 0.0)))
        prediction.save(update_fields=["stage"] + [column for _, column in OLD_COLUMNS])


class Migration(migrations.Migration):

    dependencies = [
        ("diagnosis", "0002_review"),
    ]

    operations = [
        migrations.AddField(
            model_name="smear",
            name="kind",
            field=models.CharField(
                choices=[("field", "Blood-smear field (staging)"), ("cell", "Single segmented cell (blast screening)")],
                db_index=True, default="field", max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="prediction",
            name="task",
            field=models.CharField(
                choices=[("staging", "Staging (blood-smear field)"), ("screening", "Screening (single cell)")],
                db_index=True, default="staging", max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="prediction", name="label", field=models.CharField(db_index=True, default="", max_length=32),
            preserve_default=False,
        ),
        migrations.AddField(model_name="prediction", name="probabilities", field=models.JSONField(default=dict)),
        migrations.AddField(model_name="prediction", name="threshold", field=models.FloatField(blank=True, null=True)),
        # Backward: the old columns come back with a placeholder default, then
        # restore_stage_columns fills them.
        migrations.AlterField(model_name="prediction", name="stage", field=models.CharField(default="", max_length=8)),
        migrations.AlterField(model_name="prediction", name="prob_benign", field=models.FloatField(default=0.0)),
        migrations.AlterField(model_name="prediction", name="prob_early", field=models.FloatField(default=0.0)),
        migrations.AlterField(model_name="prediction", name="prob_pre", field=models.FloatField(default=0.0)),
        migrations.AlterField(model_name="prediction", name="prob_pro", field=models.FloatField(default=0.0)),
        migrations.RunPython(copy_stage_columns, restore_stage_columns),
        migrations.RemoveField(model_name="prediction", name="stage"),
        migrations.RemoveField(model_name="prediction", name="prob_benign"),
        migrations.RemoveField(model_name="prediction", name="prob_early"),
        migrations.RemoveField(model_name="prediction", name="prob_pre"),
        migrations.RemoveField(model_name="prediction", name="prob_pro"),
    ]
