"""Every portal URL is in a role × view matrix (tests/diagnosis/test_diagnosis_access.py
and tests/review/test_review_access.py): a new page cannot be added without
saying who may open it."""
from diagnosis import urls as diagnosis_urls
from tests.diagnosis.test_diagnosis_access import PAGES as DIAGNOSIS_PAGES
from tests.review.test_review_access import PAGES as REVIEW_PAGES


def test_every_diagnosis_url_is_in_a_role_matrix():
    names = {f"diagnosis:{pattern.name}" for pattern in diagnosis_urls.urlpatterns}
    covered = {page[0] for page in DIAGNOSIS_PAGES} | {page[0] for page in REVIEW_PAGES}
    assert names - covered == set()
