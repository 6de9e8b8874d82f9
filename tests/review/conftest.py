"""Fixtures for the review tests: the diagnosis fixtures plus classified smears."""
import pytest

from tests.diagnosis.conftest import (  # noqa: F401
    fast_password_hasher, media_root, queued_heatmaps, sent_messages, smear_factory,
)


def result(stage, confidence=0.8, model="fake_model", version="0.0-test"):
    others = [s for s in ("Benign", "Early", "Pre", "Pro") if s != stage]
    rest = (1 - confidence) / 3
    probabilities = {stage: confidence, **{s: rest for s in others}}
    return {"stage": stage, "probabilities": probabilities, "model": model, "model_version": version,
            "in_domain": True, "domain_score": 0.5}


@pytest.fixture
def classified(smear_factory, case):
    """classified(stage, confidence=0.8, case_=None) -> a smear with a stored prediction."""
    from diagnosis import services

    def make(stage="Pre", confidence=0.8, case_=None):
        smear = smear_factory(status="processing", case_=case_ or case)
        services.record_prediction(smear.pk, result(stage, confidence), 5)
        smear.refresh_from_db()
        return smear

    return make


@pytest.fixture
def signed_case(classified, case, pathologist):
    """The case signed out as Pre by the pathologist, its one smear confirmed Pre."""
    from diagnosis import services

    smear = classified("Pre")
    services.review_smear(smear, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL.")
    case.refresh_from_db()
    return case
