"""Fixtures for the single-cell screening tests: the diagnosis fixtures, a
fake `ml` with both predictors (staging and screening, the shapes of the ml
contract), and classified cells / fields."""
import sys
import types

import pytest

from tests.diagnosis.conftest import (  # noqa: F401
    fast_password_hasher, media_root, queued_heatmaps, sent_messages, smear_factory,
)

THRESHOLD = 0.31


def screening_result(p_blast, threshold=THRESHOLD, model="fake_screening", version="0.0-test"):
    """The screening predictor's output: label == "blast" iff P(blast) >= threshold."""
    return {
        "label": "blast" if p_blast >= threshold else "normal",
        "probabilities": {"blast": p_blast, "normal": 1 - p_blast},
        "threshold": threshold,
        "model": model,
        "model_version": version,
        "in_domain": True,
        "domain_score": 0.5,
    }


def staging_result(stage, confidence=0.8, model="fake_model", version="0.0-test"):
    others = [s for s in ("Benign", "Early", "Pre", "Pro") if s != stage]
    probabilities = {stage: confidence, **{s: (1 - confidence) / 3 for s in others}}
    return {"stage": stage, "probabilities": probabilities, "model": model, "model_version": version,
            "in_domain": True, "domain_score": 0.5}


class FakeImageError(ValueError):
    pass


class FakeStaging:
    task = "staging"
    classes = ("Benign", "Early", "Pre", "Pro")

    def __init__(self):
        self.calls = []
        self.result = staging_result("Pre")

    def predict(self, images):
        self.calls.append(images)
        return [dict(self.result) for _ in images]


class FakeScreening:
    task = "screening"
    classes = ("blast", "normal")
    positive_class = "blast"
    threshold = THRESHOLD

    def __init__(self):
        self.calls = []
        self.p_blast = 0.9
        self.result = None  # set to return a given (e.g. malformed) dict instead

    def predict(self, images):
        self.calls.append(images)
        return [dict(self.result or screening_result(self.p_blast, self.threshold)) for _ in images]


@pytest.fixture
def fake_ml(monkeypatch):
    """`ml` replaced: load_predictor() -> staging, load_predictor("screening") -> screening."""
    module = types.ModuleType("ml")
    module.ImageError = FakeImageError
    module.staging, module.screening = FakeStaging(), FakeScreening()
    module.loads = []

    def load_predictor(task=None):
        module.loads.append(task)
        if task == "screening":
            return module.screening
        if task is None:
            return module.staging
        raise KeyError(task)

    module.load_predictor = load_predictor
    monkeypatch.setitem(sys.modules, "ml", module)
    return module


@pytest.fixture
def cell(smear_factory, case):
    """cell(p_blast=0.9, case_=None, threshold=THRESHOLD) -> a single-cell smear with a stored screening prediction."""
    from diagnosis import services

    def make(p_blast=0.9, case_=None, threshold=THRESHOLD):
        smear = smear_factory(status="processing", case_=case_ or case, kind="cell")
        services.record_prediction(smear.pk, screening_result(p_blast, threshold), 5)
        smear.refresh_from_db()
        return smear

    return make


@pytest.fixture
def field(smear_factory, case):
    """field(stage="Pre", confidence=0.8, case_=None) -> a blood-smear field with a stored staging prediction."""
    from diagnosis import services

    def make(stage="Pre", confidence=0.8, case_=None):
        smear = smear_factory(status="processing", case_=case_ or case, kind="field")
        services.record_prediction(smear.pk, staging_result(stage, confidence), 5)
        smear.refresh_from_db()
        return smear

    return make


@pytest.fixture
def screened_case(smear_factory, patient, technician, pathologist):
    """screened_case(cells, version="0.0-test", sign=True) -> a case whose cells are screened and reviewed.
    ``cells`` is a list of (P(blast), pathologist's label, in_domain); the threshold is 0.31."""
    made = {"n": 0}

    def make(cells, version="0.0-test", sign=True):
        from diagnosis import services
        from diagnosis.models import Case

        made["n"] += 1
        case = Case.objects.create(patient=patient, accession_number=f"ACC-LOCAL-{made['n']}", created_by=technician)
        for p_blast, truth, in_domain in cells:
            smear = smear_factory(status="processing", case_=case, kind="cell")
            services.record_prediction(smear.pk, {**screening_result(p_blast, version=version),
                                                  "in_domain": in_domain}, 5)
            smear.refresh_from_db()
            model_flagged = p_blast >= THRESHOLD
            agrees = model_flagged == (truth == "blast")
            services.review_smear(smear, pathologist, truth, "" if agrees else "Morphology says otherwise.")
        if sign:
            services.sign_out(case, pathologist, "", "Screened cells reviewed.")
        return case

    return make
