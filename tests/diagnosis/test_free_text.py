"""Free texts people type (reasons, comments, addenda) keep their words, line breaks and tabs, lose control
characters and Unicode non-characters (invisible, and some break a PDF or a spreadsheet cell), and are bounded."""
import pytest

from diagnosis import services
from diagnosis.services.text import check_length, without_control_characters
from tests.review.conftest import classified, signed_case  # noqa: F401


@pytest.mark.parametrize("typed,kept", [
    ("Blast morphology.\r\nSee flow.", "Blast morphology.\nSee flow."),
    ("Col A\tCol B", "Col A\tCol B"),
    ("Re\x00view\x1b[31m red\x7f", "Review[31m red"),
    ("\x0bvertical\x0cfeed\u0085next", "verticalfeednext"),
    ("Prä-B, Ödem, 早期, naïve", "Prä-B, Ödem, 早期, naïve"),
    ("keep \u200b zero-width? no: \ufdd0\U0010fffe gone", "keep \u200b zero-width? no:  gone"),
])
def test_control_characters_go_and_words_stay(typed, kept):
    assert check_length(typed, 500, "The note") == kept


def test_the_limit_counts_what_is_kept():
    assert check_length("a" * 10 + "\x00" * 5, 10, "The note") == "a" * 10
    with pytest.raises(services.ReviewError, match="11 characters long; the limit is 10"):
        check_length("a" * 11, 10, "The note")


def test_only_control_characters_leave_nothing():
    assert without_control_characters("\x00\x01\x02") == ""
    assert check_length(" \x00 ", 10, "The reason") == ""


@pytest.mark.django_db
def test_an_addendum_of_control_characters_only_is_refused(signed_case, pathologist):
    with pytest.raises(services.ReviewError, match="needs a text"):
        services.add_addendum(signed_case, pathologist, "\x00\x07")


@pytest.mark.parametrize("text,visible", [("\u200b\u200d", False), ("\u3164", False), ("\u2800", False),
                                          ("\U0001d159", False), ("é", True), ("\u200bx", True),
                                          ("\u202eEVIL", True), ("早", True)])
def test_a_text_of_invisible_characters_only_is_empty(text, visible):
    assert (check_length(text, 50, "The reason") != "") is visible


@pytest.mark.django_db
def test_the_clinical_note_loses_control_characters_too(tech_client, patient):
    from django.urls import reverse

    from diagnosis.models import Case

    tech_client.post(reverse("diagnosis:case_create"), {
        "patient": patient.pk, "accession_number": "ACC-CTRL", "specimen_type": "peripheral_blood",
        "collection_date": "2026-11-20", "clinical_note": "note\x1b[2J\x07\x0b\u200b\u202eEVIL"})
    assert Case.objects.get(accession_number="ACC-CTRL").clinical_note == "note[2J\u200b\u202eEVIL"


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["\u200b", "\x00\x07", "\u3164"])
def test_a_sign_up_name_must_be_visible(client, name):
    from django.urls import reverse

    response = client.post(reverse("account_signup"), {"email": "x@lab.example", "password1": "A-long-pass-4u!",
                                                       "password2": "A-long-pass-4u!", "full_name": name})
    assert response.status_code == 200  # the form again, with the reason (Django's own for a NUL)
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.exists()
