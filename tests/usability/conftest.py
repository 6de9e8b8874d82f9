"""Fixtures for the clinical-usability tests: the diagnosis fixtures plus
classified fields and cells (from the screening suite)."""
import pytest

from tests.diagnosis.conftest import (  # noqa: F401
    fast_password_hasher, media_root, queued_heatmaps, sent_messages, smear_factory,
)
from tests.screening.conftest import cell, fake_ml, field  # noqa: F401


@pytest.fixture
def reviewed_case(case, field, pathologist):
    """A case with one field, confirmed by the pathologist (ready to sign out)."""
    from diagnosis import services

    smear = field("Pre", 0.8)
    services.review_smear(smear, pathologist, "Pre")
    case.refresh_from_db()
    return case
