"""The reviewed-smear export in the portal: asked for on a page, zipped by a
worker (never in the web request), downloaded behind the export permission,
deleted after EXPORT_KEEP_DAYS with the record kept."""
import datetime
import errno
import io
import logging
import os
import zipfile

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnosis import services
from diagnosis.models import ReviewedExport

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """The export messages sent to the broker (export ids)."""
    from diagnosis.tasks import build_export

    messages = []
    monkeypatch.setattr(build_export, "apply_async", lambda args=None, **options: messages.append(args[0]))
    return messages


def test_asking_for_an_export_queues_one_message_after_commit(path_client, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = path_client.post(reverse("diagnosis:exports"), follow=True)
    export = ReviewedExport.objects.get()
    assert sent == [export.pk] and export.status == ReviewedExport.Status.QUEUED and not export.file
    page = response.content.decode()
    assert "a worker is zipping the reviewed smears" in page and 'http-equiv="refresh"' in page


def test_asking_again_while_one_is_pending_builds_no_second_zip(path_client, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        path_client.post(reverse("diagnosis:exports"))
        response = path_client.post(reverse("diagnosis:exports"), follow=True)
    assert ReviewedExport.objects.count() == 1 and len(sent) == 1
    assert "already being built" in response.content.decode()


def test_the_worker_zips_the_reviewed_smears_and_the_page_offers_the_download(signed_case, path_client, pathologist):
    export, _ = services.request_export(pathologist)
    assert services.build_export(export.pk) is not None
    export.refresh_from_db()
    assert export.status == ReviewedExport.Status.READY and export.image_count == 1 and export.size_bytes > 0
    page = path_client.get(reverse("diagnosis:exports")).content.decode()
    assert reverse("diagnosis:export_download", args=[export.pk]) in page and 'http-equiv="refresh"' not in page
    response = path_client.get(reverse("diagnosis:export_download", args=[export.pk]))
    assert response["Content-Disposition"] == f'attachment; filename="{export.download_name}"'
    assert response["Cache-Control"] == "no-store, private"
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert len([n for n in names if n.startswith("reviewed/staging/Pre/")]) == 1


def test_a_message_delivered_twice_builds_once(signed_case, pathologist):
    export, _ = services.request_export(pathologist)
    services.build_export(export.pk)
    first = ReviewedExport.objects.get(pk=export.pk).file.name
    assert services.build_export(export.pk) is None
    assert ReviewedExport.objects.get(pk=export.pk).file.name == first


def test_a_failed_build_is_recorded_and_a_new_export_can_be_asked_for(signed_case, pathologist, path_client,
                                                                       monkeypatch):
    def broken(out, smears=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("diagnosis.services.export.write_export_zip", broken)
    export, _ = services.request_export(pathologist)
    assert services.build_export(export.pk) is None
    export.refresh_from_db()
    disk_full = os.strerror(errno.ENOSPC)
    assert export.status == ReviewedExport.Status.FAILED and disk_full in export.error
    assert disk_full in path_client.get(reverse("diagnosis:exports")).content.decode()
    assert path_client.get(reverse("diagnosis:export_download", args=[export.pk])).status_code == 404
    assert services.request_export(pathologist)[1] is True


def test_a_failed_build_says_what_failed_without_the_servers_paths_and_logs_the_whole_exception(
        signed_case, pathologist, path_client, monkeypatch, caplog):
    stored = "/srv/leukportal/media/smears/2026/11/25/ACC-0001.png"

    def broken(out, smears=None):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), stored)

    monkeypatch.setattr("diagnosis.services.export.write_export_zip", broken)
    export, _ = services.request_export(pathologist)
    with caplog.at_level(logging.ERROR, logger="diagnosis.services.export"):
        assert services.build_export(export.pk) is None
    export.refresh_from_db()
    page = path_client.get(reverse("diagnosis:exports")).content.decode()
    assert export.status == ReviewedExport.Status.FAILED
    assert stored not in export.error and stored not in page
    assert "The export could not be built" in page and os.strerror(errno.ENOENT) in page
    assert stored in caplog.text  # the whole exception, traceback included, is in the server log
    assert services.request_export(pathologist)[1] is True  # and a new export can be asked for


def test_an_unexpected_failure_is_named_by_its_kind_only(signed_case, pathologist, monkeypatch):
    def broken(out, smears=None):
        raise RuntimeError("storage backend s3://lab-bucket/private/key refused: token=abc123")

    monkeypatch.setattr("diagnosis.services.export.write_export_zip", broken)
    export, _ = services.request_export(pathologist)
    services.build_export(export.pk)
    export.refresh_from_db()
    assert "RuntimeError" in export.error and "s3://" not in export.error and "abc123" not in export.error


def test_the_sweep_fails_a_lost_export_and_deletes_old_zips_keeping_the_record(signed_case, pathologist, path_client,
                                                                              settings):
    lost, _ = services.request_export(pathologist)
    ReviewedExport.objects.filter(pk=lost.pk).update(requested_at=timezone.now() - datetime.timedelta(hours=2))
    ready = ReviewedExport.objects.create(requested_by=pathologist)
    services.build_export(ready.pk)
    ready.refresh_from_db()
    storage, name = ready.file.storage, ready.file.name
    later = timezone.now() + datetime.timedelta(days=settings.EXPORT_KEEP_DAYS, minutes=1)
    assert services.tidy_exports(now=later) == (1, 1)
    lost.refresh_from_db()
    ready.refresh_from_db()
    assert lost.status == ReviewedExport.Status.FAILED and "ask again" in lost.error
    assert ready.status == ReviewedExport.Status.EXPIRED and not ready.file and not storage.exists(name)
    assert ready.image_count == 1  # the record of what was exported stays
    assert path_client.get(reverse("diagnosis:export_download", args=[ready.pk])).status_code == 404


def test_the_periodic_sweep_tidies_exports(pathologist):
    from diagnosis.tasks import sweep_stale_smears

    export, _ = services.request_export(pathologist)
    ReviewedExport.objects.filter(pk=export.pk).update(requested_at=timezone.now() - datetime.timedelta(days=1))
    sweep_stale_smears()
    assert ReviewedExport.objects.get(pk=export.pk).status == ReviewedExport.Status.FAILED


def test_the_export_record_is_read_only_in_the_admin(pathologist, client, make_user):
    export, _ = services.request_export(pathologist)
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    response = client.get(reverse("admin:diagnosis_reviewedexport_change", args=[export.pk]))
    page = response.content.decode()
    assert response.status_code == 200 and "Queued" in page
    assert 'name="status"' not in page and 'name="file"' not in page
    assert client.get(reverse("admin:diagnosis_reviewedexport_add")).status_code == 403


def test_every_download_is_recorded_with_who_took_the_images_and_shown_on_the_page(signed_case, pathologist,
                                                                                   path_client, make_user, client):
    """Second audit round (R12): a download left no record; another pathologist's download of an export someone
    else asked for was recorded nowhere, and the case admin's export of selected cases neither."""
    from diagnosis.models import ExportDownload

    export, _ = services.request_export(pathologist)
    services.build_export(export.pk)
    other = make_user("Pathologist")
    client.force_login(other)
    b"".join(client.get(reverse("diagnosis:export_download", args=[export.pk])).streaming_content)
    download = ExportDownload.objects.get()
    assert (download.export, download.downloaded_by, download.via, download.image_count) == (
        export, other, ExportDownload.Via.EXPORTS_PAGE, 1)
    page = path_client.get(reverse("diagnosis:exports")).content.decode()
    assert "Downloaded by" in page and other.display_name in page.split("data-downloads")[1]

    client.force_login(make_user("Admin", is_staff=True))
    response = client.post(reverse("admin:diagnosis_case_changelist"),
                           {"action": "export_reviewed", "_selected_action": [signed_case.pk]})
    assert response["Content-Type"] == "application/zip"
    by_admin = ExportDownload.objects.get(via=ExportDownload.Via.CASE_ADMIN)
    assert by_admin.export is None and by_admin.image_count == 1 and by_admin.cases == signed_case.accession_number
    with pytest.raises(Exception, match="append-only"):
        by_admin.save()
