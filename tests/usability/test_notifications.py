"""Issue 15.7: notifications in the portal (and optionally by e-mail): the
technician when an upload batch is classified, the pathologists when a case
enters the review queue; a progress bar per upload batch."""
import pytest
from django.core import mail
from django.urls import reverse

from diagnosis import tasks
from diagnosis.models import Notification
from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def upload_two(client, case):
    files = [upload(f"f{i}.png", image_bytes(seed=i)) for i in (1, 2)]
    response = client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {"kind": "field", "images": files})
    assert response.status_code == 302


@pytest.fixture
def uploaded(tech_client, case, sent_messages, fake_ml, django_capture_on_commit_callbacks, settings):
    """The ids of two smears uploaded through the page, as sent to the workers.
    One smear per message here, so the tests can follow a batch smear by smear
    (a message that classifies both is in test_one_message_classifying_the_whole_upload_notifies_once)."""
    settings.SMEAR_BATCH_SIZE = 1
    with django_capture_on_commit_callbacks(execute=True):
        upload_two(tech_client, case)
    assert len(sent_messages) == 2
    return sent_messages


def test_technician_is_notified_once_when_the_whole_batch_is_classified(uploaded, technician, tech_client, case):
    tasks.classify_smear(uploaded[0])
    assert not Notification.objects.filter(recipient=technician).exists()  # half a batch says nothing yet
    tasks.classify_smear(uploaded[1])
    tasks.classify_smear(uploaded[1])  # a redelivered message notifies nobody twice
    note = Notification.objects.get(recipient=technician)
    assert note.text == "Case ACC-0001: 2 of 2 images classified."
    page = tech_client.get(reverse("diagnosis:notifications")).content.decode()
    assert "2 of 2 images classified" in page and "data-unread-item" in page
    assert 'data-unread>1<' in page  # the badge in the navigation bar


def test_one_message_classifying_the_whole_upload_notifies_once(uploaded, technician, settings):
    settings.SMEAR_BATCH_SIZE = 32
    assert tasks.classify_smear(uploaded[0]) == "done"  # claims both smears of the upload
    assert tasks.classify_smear(uploaded[1]) == "skipped"
    note = Notification.objects.get(recipient=technician)
    assert note.text == "Case ACC-0001: 2 of 2 images classified."


def test_a_failed_image_is_named_in_the_batch_notification(uploaded, technician, fake_ml):
    tasks.classify_smear(uploaded[0])
    fake_ml.staging.result = {"nonsense": True}
    tasks.classify_smear(uploaded[1])
    assert "1 failed" in Notification.objects.get(recipient=technician).text


def test_pathologists_are_notified_when_a_case_enters_the_queue(uploaded, pathologist, make_user, client, case):
    other = make_user("Pathologist")
    make_user("Technician")  # technicians do not review: no queue notification
    for smear_id in uploaded:
        tasks.classify_smear(smear_id)
    ready = Notification.objects.filter(kind=Notification.Kind.CASE_READY)
    assert set(ready.values_list("recipient", flat=True)) == {pathologist.pk, other.pk}
    client.force_login(pathologist)
    page = client.get(reverse("diagnosis:notifications")).content.decode()
    assert "ACC-0001 (P-0001) is ready for review" in page
    assert reverse("diagnosis:case_review", args=[case.pk]) in page


def test_mark_all_read_clears_the_badge(uploaded, tech_client):
    for smear_id in uploaded:
        tasks.classify_smear(smear_id)
    tech_client.post(reverse("diagnosis:notifications_read"))
    page = tech_client.get(reverse("diagnosis:notifications")).content.decode()
    assert "data-unread" not in page


def test_notifications_are_private_to_their_recipient(uploaded, make_user, client):
    for smear_id in uploaded:
        tasks.classify_smear(smear_id)
    client.force_login(make_user("Technician"))
    assert "images classified" not in client.get(reverse("diagnosis:notifications")).content.decode()


def test_notifications_page_needs_a_role(client, no_role_user):
    assert client.get(reverse("diagnosis:notifications")).url.startswith(reverse("account_login"))
    client.force_login(no_role_user)
    assert client.get(reverse("diagnosis:notifications")).url == reverse("pending_role")


def test_notifications_are_emailed_when_configured_without_patient_identifiers(
        settings, uploaded, technician, case, django_capture_on_commit_callbacks):
    settings.NOTIFY_BY_EMAIL = True
    with django_capture_on_commit_callbacks(execute=True):
        for smear_id in uploaded:
            tasks.classify_smear(smear_id)
    to_tech = [m for m in mail.outbox if m.to == [technician.email]]
    assert len(to_tech) == 1 and "upload finished" in to_tech[0].subject
    assert f"/cases/{case.pk}/" in to_tech[0].body
    for message in mail.outbox:  # mail leaves the lab: no patient or case identifier in it
        assert "P-0001" not in message.body + message.subject and "ACC-0001" not in message.body + message.subject
    assert Notification.objects.get(recipient=technician).emailed_at is not None


def test_no_email_by_default(uploaded, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        for smear_id in uploaded:
            tasks.classify_smear(smear_id)
    assert mail.outbox == []


def test_upload_queue_shows_a_progress_bar_per_batch(uploaded, tech_client):
    tasks.classify_smear(uploaded[0])
    html = tech_client.get(reverse("diagnosis:upload_queue")).content.decode()
    assert 'aria-valuenow="50"' in html and "1 of 2 classified" in html
    payload = tech_client.get(reverse("diagnosis:upload_queue_status")).json()
    assert [(b["done"], b["total"], b["percent"], b["finished"]) for b in payload["batches"]] == [(1, 2, 50, False)]


def test_a_mail_failure_never_fails_the_classification(settings, uploaded, technician, monkeypatch,
                                                      django_capture_on_commit_callbacks):
    settings.NOTIFY_BY_EMAIL = True

    def broken(*args, **kwargs):
        raise OSError("SMTP server unreachable")

    monkeypatch.setattr("diagnosis.notifications.send_mail", broken)
    with django_capture_on_commit_callbacks(execute=True):
        for smear_id in uploaded:
            assert tasks.classify_smear(smear_id) == "done"
    note = Notification.objects.get(recipient=technician)
    assert note.emailed_at is None  # still shown in the portal
