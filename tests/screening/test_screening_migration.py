"""The data migration diagnosis/0003_screening keeps existing staging
predictions: the database is migrated back to 0002 (the four probability
columns), a prediction is written there the old way through the historical
models, and migrating forward must give the same label and probabilities in
the new fields. Backward, a staging prediction goes back into the columns."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from diagnosis.models import Prediction

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

BEFORE = [("diagnosis", "0002_review")]
OLD = {"prob_benign": 0.05, "prob_early": 0.15, "prob_pre": 0.7, "prob_pro": 0.1}


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest():
    """Every app's newest migration: the schema today's models read."""
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


def test_existing_staging_predictions_survive_the_migration():
    old_apps = migrate(BEFORE)
    try:
        User = old_apps.get_model("accounts", "User")
        Patient, Case = old_apps.get_model("diagnosis", "Patient"), old_apps.get_model("diagnosis", "Case")
        Smear, OldPrediction = old_apps.get_model("diagnosis", "Smear"), old_apps.get_model("diagnosis", "Prediction")
        user = User.objects.create(email="old@lab.example", password="!")
        case = Case.objects.create(patient=Patient.objects.create(lab_id="P-OLD"), accession_number="OLD-1",
                                   created_by=user)
        smear = Smear.objects.create(case=case, image="smears/old.png", sha256="0" * 64, width=1, height=1,
                                     image_format="PNG", size_bytes=1, original_filename="old.png",
                                     uploaded_by=user, status="done")
        OldPrediction.objects.create(smear=smear, model_name="mobilenetv3_lstm", model_version="v1", stage="Pre",
                                     latency_ms=12, **OLD)
    finally:
        migrate(latest())
    prediction = Prediction.objects.get(smear__original_filename="old.png")
    assert prediction.smear.kind == "field"
    assert (prediction.task, prediction.label, prediction.threshold) == ("staging", "Pre", None)
    assert prediction.probabilities == {"Benign": 0.05, "Early": 0.15, "Pre": 0.7, "Pro": 0.1}
    assert prediction.labels == ("Benign", "Early", "Pre", "Pro") and prediction.confidence == pytest.approx(0.7)
    assert (prediction.model_name, prediction.model_version, prediction.latency_ms) == ("mobilenetv3_lstm", "v1", 12)
    # Predictions made before the domain check existed stay suggestions, with no score (never checked).
    assert (prediction.in_domain, prediction.domain_score, prediction.domain_reason) == (True, None, "")
    prediction.smear.case.refresh_from_db()
    assert prediction.smear.case.compute_suggestion()[0] == "Pre"

    # Backward: the staging prediction goes back into the four columns.
    old_apps = migrate(BEFORE)
    try:
        row = old_apps.get_model("diagnosis", "Prediction").objects.get(smear__original_filename="old.png")
        assert row.stage == "Pre" and {k: getattr(row, k) for k in OLD} == OLD
    finally:
        migrate(latest())
