"""Sign-out and the draft final stage/comment from a review page that is out of date (security audit round 2, R6).

Pathologist B opens the review page; pathologist A then reclassifies every smear (or saves a draft); B presses
*Sign out* (or *Save draft*) on the page B still has. Before the case-level version (Case.review_version), the
sign-out succeeded with a stage that contradicted reviews B never saw, and B's draft silently replaced A's. The
finalize form now carries the version it showed, and the services refuse a different one (ReviewConflict): nothing
is signed or saved, and what B typed is shown again."""
import html
import re

import pytest
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case, Smear
from tests.review.conftest import result

pytestmark = pytest.mark.django_db


def review_url(case):
    return reverse("diagnosis:case_review", args=[case.pk])


def finalize_url(case):
    return reverse("diagnosis:case_finalize", args=[case.pk])


def shown_version(page):
    """The case version the finalize form carries ("" when it carries none)."""
    found = re.search(r'name="case_version" value="(\d+)"', page)
    return found.group(1) if found else ""


def open_review(client, case):
    response = client.get(review_url(case))
    assert response.status_code == 200
    return response.content.decode()


def text_of(response):
    return html.unescape(response.content.decode())


def current_version(case):
    return Case.objects.values_list("review_version", flat=True).get(pk=case.pk)


@pytest.fixture
def pathologists(make_user):
    """(A, B): two pathologists."""
    return make_user("Pathologist"), make_user("Pathologist")


@pytest.fixture
def clients(pathologists):
    """A browser each for A and B."""
    browsers = Client(), Client()
    for browser, user in zip(browsers, pathologists):
        browser.force_login(user)
    return browsers


@pytest.fixture
def reviewed(classified, case, pathologists):
    """Two smears of the case, both confirmed Pre-B by A: the case can be signed out."""
    smears = [classified("Pre"), classified("Pre")]
    for smear in smears:
        services.review_smear(smear, pathologists[0], "Pre")
    return smears


def reclassify_every_smear(browser, case, label="Benign"):
    """A reclassifies each smear through the review page, as the audit's script did."""
    for smear in case.smears.order_by("pk"):
        response = browser.post(reverse("diagnosis:smear_review", args=[smear.pk]),
                                {"label": label, "reason": "benign on review", "version": smear.review_version})
        assert response.status_code == 302
    assert set(case.smears.values_list("review_label", flat=True)) == {label}


def test_a_sign_out_from_a_page_shown_before_every_smear_was_reclassified_is_refused(case, reviewed, clients):
    a, b = clients
    stale = shown_version(open_review(b, case))
    reclassify_every_smear(a, case)
    response = b.post(finalize_url(case), {"final_stage": "Pro", "comment": "Pro-B, as I read it.",
                                           "action": "sign_out", "case_version": stale})
    case.refresh_from_db()
    assert not case.is_signed_out and case.signed_out_stage == "" and case.final_stage == ""
    assert not AuditEvent.objects.filter(case=case, action__in=["sign_out", "final_stage"]).exists()
    assert response.status_code == 409
    page = text_of(response)
    assert "The case changed since you opened this page" in page and "nothing was signed" in page
    # The page B gets back shows the case as it is now (A's labels), with what B typed kept in the form.
    assert "benign on review" in page
    assert ">Pro-B, as I read it.</textarea>" in page
    assert re.search(r'<option value="Pro" selected>', page)
    assert shown_version(page) == str(current_version(case))


def test_a_stale_sign_out_asked_for_as_json_gets_409(case, reviewed, clients):
    a, b = clients
    stale = shown_version(open_review(b, case))
    reclassify_every_smear(a, case)
    response = b.post(finalize_url(case), {"final_stage": "Pro", "action": "sign_out", "case_version": stale},
                      HTTP_ACCEPT="application/json")
    assert response.status_code == 409 and "nothing was signed" in response.content.decode()
    case.refresh_from_db()
    assert not case.is_signed_out


def test_a_draft_saved_from_a_stale_page_keeps_the_other_pathologists_draft(case, reviewed, clients, pathologists):
    a, b = clients
    stale = shown_version(open_review(b, case))
    response = a.post(finalize_url(case), {"final_stage": "Pre", "comment": "A: Pre-B, awaiting flow cytometry.",
                                           "action": "save", "case_version": shown_version(open_review(a, case))})
    assert response.status_code == 302
    response = b.post(finalize_url(case), {"final_stage": "Pro", "comment": "B: Pro-B.", "action": "save",
                                           "case_version": stale})
    case.refresh_from_db()
    assert (case.final_stage, case.review_comment) == ("Pre", "A: Pre-B, awaiting flow cytometry.")
    assert list(AuditEvent.objects.filter(case=case, action="final_stage").values_list("actor", "new_value")) == [
        (pathologists[0].pk, "Pre")]
    assert response.status_code == 409
    page = text_of(response)
    assert "The case changed since you opened this page" in page and "nothing was saved" in page
    assert ">B: Pro-B.</textarea>" in page  # what B typed, in the form
    assert "A: Pre-B, awaiting flow cytometry." in page  # and the draft A saved, said next to it


def test_a_page_opened_after_the_changes_signs_out(case, reviewed, clients, pathologists):
    a, b = clients
    reclassify_every_smear(a, case)
    services.set_final_stage(case, pathologists[0], "Benign", "A's draft.")
    page = open_review(b, case)
    assert shown_version(page) == str(current_version(case))
    response = b.post(finalize_url(case), {"final_stage": "Benign", "comment": "Reactive; no blasts.",
                                           "action": "sign_out", "case_version": shown_version(page)})
    assert response.status_code == 302
    case.refresh_from_db()
    assert case.is_signed_out and case.signed_out_stage == "Benign" and case.signed_out_by == pathologists[1]
    assert case.review_comment == "Reactive; no blasts."


def test_the_page_given_back_after_a_conflict_signs_out(case, reviewed, clients, pathologists):
    """The refused page shows the case as it is now and carries its version: B checks it and signs out from it."""
    a, b = clients
    stale = shown_version(open_review(b, case))
    reclassify_every_smear(a, case)
    refused = text_of(b.post(finalize_url(case), {"final_stage": "Benign", "comment": "Reactive.",
                                                 "action": "sign_out", "case_version": stale}))
    response = b.post(finalize_url(case), {"final_stage": "Benign", "comment": "Reactive.", "action": "sign_out",
                                           "case_version": shown_version(refused)})
    assert response.status_code == 302
    case.refresh_from_db()
    assert case.is_signed_out and case.signed_out_stage == "Benign"


def test_one_pathologist_reviewing_saving_and_signing_out_from_each_page_shown_never_conflicts(
        case, classified, clients, pathologists):
    """Each action returns to the review page, which carries the version after that action."""
    _, b = clients
    smears = [classified("Pre"), classified("Pro")]
    for smear in smears:
        smear.refresh_from_db()
        response = b.post(reverse("diagnosis:smear_review", args=[smear.pk]),
                          {"label": "Pre", "reason": "Pre-B on review", "version": smear.review_version}, follow=True)
        assert "reviewed." in text_of(response)
    page = open_review(b, case)
    response = b.post(finalize_url(case), {"final_stage": "Pre", "comment": "Draft.", "action": "save",
                                           "case_version": shown_version(page)}, follow=True)
    assert "Final stage and comment saved" in text_of(response)
    response = b.post(finalize_url(case), {"final_stage": "Pre", "comment": "Pre-B ALL.", "action": "sign_out",
                                           "case_version": shown_version(text_of(response))})
    case.refresh_from_db()
    assert response.status_code == 302 and case.is_signed_out and case.signed_out_stage == "Pre"


def test_a_finalize_post_without_the_version_is_refused(case, reviewed, clients):
    """A page from before the version existed, or anything but the portal's form: it cannot show what it signs."""
    _, b = clients
    for version in ("", "abc", "-1", "²"):
        data = {"final_stage": "Pre", "comment": "Mine.", "action": "sign_out"}
        if version:
            data["case_version"] = version
        response = b.post(finalize_url(case), data)
        assert response.status_code == 409 and "nothing was signed" in text_of(response)
    case.refresh_from_db()
    assert not case.is_signed_out and case.review_comment == ""


def test_a_smear_added_after_the_page_was_shown_never_lets_that_page_sign_out(
        case, reviewed, smear_factory, clients, pathologists):
    """Uploads and classification results do not move the version: until a pathologist reviews or sets aside a new
    smear, sign-out waits for it anyway; and that review or setting aside moves the version."""
    a, b = clients
    stale = shown_version(open_review(b, case))
    added = smear_factory(status="queued")
    data = {"final_stage": "Pre", "action": "sign_out", "case_version": stale}
    assert "still being classified" in text_of(b.post(finalize_url(case), data, follow=True))
    Smear.objects.filter(pk=added.pk).update(status=Smear.Status.PROCESSING)
    services.record_prediction(added.pk, result("Pro"), 5)
    assert "not yet confirmed" in text_of(b.post(finalize_url(case), data, follow=True))
    services.review_smear(added, pathologists[0], "Pro")
    response = b.post(finalize_url(case), data)
    assert response.status_code == 409 and "nothing was signed" in text_of(response)
    case.refresh_from_db()
    assert not case.is_signed_out


def test_a_stale_sign_out_after_the_case_was_signed_out_keeps_what_was_typed(case, reviewed, clients, pathologists):
    a, b = clients
    stale = shown_version(open_review(b, case))
    services.sign_out(case, pathologists[0], "Pre", "Signed by A.")
    response = b.post(finalize_url(case), {"final_stage": "Pro", "comment": "B's long comment, typed for minutes.",
                                           "action": "sign_out", "case_version": stale}, follow=True)
    page = text_of(response)
    assert "changes now go through an addendum" in page and "B's long comment, typed for minutes." in page
    case.refresh_from_db()
    assert case.signed_out_by == pathologists[0] and case.review_comment == "Signed by A."


# -- the services --------------------------------------------------------------------------------------------------


def _mark_one_not_assessable(case, user):
    services.mark_not_assessable(case.smears.order_by("pk").first(), user, "Out of focus.")


def _prepare_nothing(case, user):
    pass


#: (name, prepare, change): each change a pathologist sees on the review page moves the version.
CHANGES = [
    ("confirm a smear", _prepare_nothing,
     lambda case, user: services.review_smear(case.smears.order_by("pk").first(), user, "Pre")),
    ("reclassify a smear", _prepare_nothing,
     lambda case, user: services.review_smear(case.smears.order_by("pk").first(), user, "Benign", "benign")),
    ("confirm all remaining", _prepare_nothing, lambda case, user: services.confirm_remaining(case, user)),
    ("mark not assessable", _prepare_nothing, _mark_one_not_assessable),
    ("mark assessable again", _mark_one_not_assessable,
     lambda case, user: services.mark_assessable(case.smears.order_by("pk").first(), user, "Readable after all.")),
    ("save a draft stage", _prepare_nothing, lambda case, user: services.set_final_stage(case, user, "Pre", "")),
    ("save a draft comment", _prepare_nothing,
     lambda case, user: services.set_final_stage(case, user, "", "Awaiting flow cytometry.")),
    # The case's and patient's data are signed with the report: a correction made while the page was open counts.
    ("correct the clinical note", _prepare_nothing,
     lambda case, user: services.update_case(case, user, clinical_note="Corrected: lymphocytosis.")),
    ("correct the accession number", _prepare_nothing,
     lambda case, user: services.update_case(case, user, accession_number="ACC-0002")),
    ("correct the patient's birth year", _prepare_nothing,
     lambda case, user: services.update_patient(case.patient, user, birth_year=1961)),
]


@pytest.mark.parametrize("prepare,change", [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_each_change_of_the_review_moves_the_version_and_refuses_a_stale_sign_out(
        case, classified, pathologists, prepare, change):
    a, b = pathologists
    classified("Pre"), classified("Pre")
    prepare(case, a)
    before = current_version(case)
    change(case, a)
    assert current_version(case) > before
    # Make the case signable as it now is, without moving the version further than the change did.
    Smear.objects.filter(case=case, review_label="", not_assessable=False).update(review_label="Pre")
    with pytest.raises(services.ReviewConflict, match="The case changed since you opened this page"):
        services.sign_out(case, b, "Pre", "", expected_version=before)
    with pytest.raises(services.ReviewConflict, match="nothing was saved"):
        services.set_final_stage(case, b, "Pro", "B.", expected_version=before)
    case.refresh_from_db()
    assert not case.is_signed_out and case.final_stage != "Pro"
    services.sign_out(case, b, "Pre", "", expected_version=current_version(case))
    case.refresh_from_db()
    assert case.is_signed_out


def test_services_called_without_a_version_do_not_check_it(case, reviewed, pathologists):
    """Scripts, tests and the admin's tools that sign or save without a page keep working."""
    a, b = pathologists
    services.review_smear(reviewed[0], a, "Benign", "benign")
    services.set_final_stage(case, b, "Pre", "Draft.")
    services.sign_out(case, b, "Pre", "Signed.")
    case.refresh_from_db()
    assert case.is_signed_out


def test_the_version_is_not_in_the_admin_case_form(case, client, lab_admin):
    client.force_login(lab_admin)
    page = client.get(reverse("admin:diagnosis_case_change", args=[case.pk])).content.decode()
    assert "accession_number" in page and 'name="review_version"' not in page


# --- Third audit round: the other case-wide actions of the review page ---------------------------------------

def test_a_stale_confirm_all_is_refused_and_confirms_nothing(classified, pathologist, make_user, case, client):
    """A page listing the remaining smears before another pathologist reclassified or set one aside must not confirm,
    in its user's name, what they never saw."""
    first, second = classified("Pre"), classified("Early")
    case.refresh_from_db()
    shown = case.review_version
    services.mark_not_assessable(second, make_user("Pathologist"), "Out of focus.")
    client.force_login(pathologist)
    response = client.post(reverse("diagnosis:case_confirm_remaining", args=[case.pk]), {"case_version": shown},
                           follow=True)
    assert "changed since you opened this page" in response.content.decode()
    first.refresh_from_db()
    assert first.review_label == ""
    case.refresh_from_db()
    response = client.post(reverse("diagnosis:case_confirm_remaining", args=[case.pk]),
                           {"case_version": case.review_version}, follow=True)
    first.refresh_from_db()
    assert first.review_label == "Pre" and "1 smear confirmed" in response.content.decode()


def test_a_stale_addendum_that_changes_the_stage_is_refused_and_its_text_is_shown(signed_case, pathologist,
                                                                                   make_user, client):
    signed_case.refresh_from_db()
    shown = signed_case.review_version
    services.add_addendum(signed_case, make_user("Pathologist"), "Flow cytometry: Pro-B.", "Pro",
                          expected_version=shown)
    client.force_login(pathologist)
    response = client.post(reverse("diagnosis:case_addendum", args=[signed_case.pk]),
                           {"text": "Molecular: Early Pre-B.", "final_stage": "Early", "case_version": shown},
                           follow=True)
    page = response.content.decode()
    assert "changed since you opened this page" in page and "Molecular: Early Pre-B." in page
    signed_case.refresh_from_db()
    assert signed_case.final_stage == "Pro" and signed_case.addenda.count() == 1
    # A note that changes no stage is appended whatever the page's age.
    client.post(reverse("diagnosis:case_addendum", args=[signed_case.pk]), {"text": "Typo.", "case_version": shown})
    assert signed_case.addenda.count() == 2


def test_an_edit_that_changes_nothing_keeps_the_version(case, reviewed, pathologists):
    before = current_version(case)
    services.update_case(case, pathologists[0], clinical_note=case.clinical_note)
    assert current_version(case) == before


def test_a_patient_correction_leaves_the_version_of_a_signed_out_case_alone(case, reviewed, pathologists, patient):
    """Its report keeps the patient data it was signed with; an addendum form open on it stays valid."""
    services.sign_out(case, pathologists[1], "Pre", "")
    signed = current_version(case)
    services.update_patient(patient, pathologists[0], birth_year=1961)
    assert current_version(case) == signed
