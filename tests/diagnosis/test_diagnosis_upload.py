import hashlib

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from diagnosis.models import Case, Smear
from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def post_files(client, case, files, capture):
    with capture(execute=True) as callbacks:
        response = client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {"kind": "field", "images": files})
    return response, callbacks


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_several_valid_images_are_stored_then_queued_after_commit(
    tech_client, case, technician, sent_messages, django_capture_on_commit_callbacks
):
    files = [
        upload("a.png", image_bytes("PNG", seed=1)),
        upload("b.jpg", image_bytes("JPEG", size=(80, 64), seed=2)),
        upload("c.tiff", image_bytes("TIFF", seed=3)),
        upload("d.bmp", image_bytes("BMP", seed=4)),
    ]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {"kind": "field", "images": files})
        # Nothing is sent while the transaction is open.
        assert sent_messages == []
    assert response.status_code == 302 and response.url == case.get_absolute_url()
    smears = list(case.smears.order_by("pk"))
    assert [s.original_filename for s in smears] == ["a.png", "b.jpg", "c.tiff", "d.bmp"]
    assert [s.image_format for s in smears] == ["PNG", "JPEG", "TIFF", "BMP"]
    assert (smears[1].width, smears[1].height) == (80, 64)
    for smear, f in zip(smears, files):
        f.seek(0)
        data = f.read()
        assert smear.sha256 == hashlib.sha256(data).hexdigest()
        assert smear.image.open("rb").read() == data
        assert smear.thumbnail and smear.status == Smear.Status.QUEUED and smear.uploaded_by == technician
    # One message per smear, sent only by the on-commit callbacks.
    assert len(callbacks) == 4
    for callback in callbacks:
        callback()
    assert sent_messages == [s.pk for s in smears]
    case.refresh_from_db()
    assert case.status == Case.Status.PROCESSING
    assert "4 images stored and queued" in " ".join(messages_of(response))


BAD_FILES = {
    "not an image": (b"%PDF-1.4 this is a report, not a smear", "not an image in an accepted format"),
    "corrupt": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, None),
    "truncated": (image_bytes("JPEG", size=(300, 200), seed=7)[:-600], "truncated"),
    "gif": (image_bytes("GIF", seed=8), "not an image in an accepted format"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_is_rejected_with_reason_while_good_one_is_kept(
    tech_client, case, sent_messages, django_capture_on_commit_callbacks, kind
):
    data, reason = BAD_FILES[kind]
    files = [upload(f"bad-{kind}.png", data), upload("good.png", image_bytes(seed=11))]
    response, _ = post_files(tech_client, case, files, django_capture_on_commit_callbacks)
    assert response.status_code == 302
    assert list(case.smears.values_list("original_filename", flat=True)) == ["good.png"]
    assert sent_messages == [case.smears.get().pk]
    msgs = messages_of(response)
    rejected = [m for m in msgs if f"bad-{kind}.png" in m]
    assert len(rejected) == 1 and "was not accepted" in rejected[0]
    if reason:
        assert reason in rejected[0]


def test_truncated_png_is_rejected(tech_client, case, django_capture_on_commit_callbacks):
    data = image_bytes("PNG", size=(200, 200), seed=5)
    response, _ = post_files(tech_client, case, [upload("cut.png", data[: len(data) // 2])], django_capture_on_commit_callbacks)
    assert response.status_code == 200  # nothing accepted: the form is shown again
    assert not case.smears.exists()
    assert "cut.png" in response.content.decode()


def test_file_over_byte_limit_is_rejected(tech_client, case, settings, django_capture_on_commit_callbacks):
    big = image_bytes("BMP", size=(100, 100), seed=1)  # ~30 KB
    settings.SMEAR_MAX_UPLOAD_BYTES = 10_000
    response, _ = post_files(
        tech_client, case, [upload("big.bmp", big), upload("small.png", image_bytes(seed=2))], django_capture_on_commit_callbacks
    )
    assert list(case.smears.values_list("original_filename", flat=True)) == ["small.png"]
    msg = next(m for m in messages_of(response) if "big.bmp" in m)
    assert "the limit is 9.8 KB" in msg


def test_image_over_pixel_limit_is_rejected(tech_client, case, settings, django_capture_on_commit_callbacks):
    settings.SMEAR_MAX_PIXELS = 100 * 100
    response, _ = post_files(
        tech_client, case, [upload("huge.png", image_bytes(size=(101, 100)))], django_capture_on_commit_callbacks
    )
    assert response.status_code == 200
    assert not case.smears.exists()
    assert "10,100 pixels; the limit is 10,000 pixels" in response.content.decode()


def test_decompression_bomb_is_rejected_before_decoding(tech_client, case, django_capture_on_commit_callbacks):
    # A tiny PNG claiming 20000x20000 pixels (above the default 40 MP limit).
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    response, _ = post_files(tech_client, case, [upload("bomb.png", buf.getvalue())], django_capture_on_commit_callbacks)
    assert not case.smears.exists()
    assert "bomb.png” was not accepted: the image has more than the limit of 40,000,000 pixels" in response.content.decode()


def test_duplicate_image_in_case_is_rejected(tech_client, case, django_capture_on_commit_callbacks):
    data = image_bytes(seed=3)
    post_files(tech_client, case, [upload("first.png", data)], django_capture_on_commit_callbacks)
    response, _ = post_files(
        tech_client, case, [upload("again.png", data), upload("copy.png", data)], django_capture_on_commit_callbacks
    )
    assert case.smears.count() == 1
    assert "already in this case" in response.content.decode()


def test_too_many_files(tech_client, case, settings, django_capture_on_commit_callbacks):
    settings.SMEAR_MAX_FILES_PER_UPLOAD = 2
    files = [upload(f"{i}.png", image_bytes(seed=i)) for i in range(3)]
    response, _ = post_files(tech_client, case, files, django_capture_on_commit_callbacks)
    assert response.status_code == 200
    assert "At most 2 files" in response.content.decode()
    assert not case.smears.exists()


def test_no_file(tech_client, case):
    response = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {})
    assert response.status_code == 200
    assert "Choose at least one image file" in response.content.decode()


def test_create_patient_and_case_flow(tech_client, technician):
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "P-77", "sex": "M", "birth_year": 1970})
    assert response.status_code == 302
    from diagnosis.models import Patient

    patient = Patient.objects.get(lab_id="P-77")
    assert patient.created_by == technician
    response = tech_client.post(
        reverse("diagnosis:case_create"), {"patient": patient.pk, "accession_number": "ACC-77", "specimen_type": "peripheral_blood",
                                             "clinical_note": "WBC high"}
    )
    case = Case.objects.get(accession_number="ACC-77")
    assert response.url == reverse("diagnosis:smear_upload", args=[case.pk])
    assert case.created_by == technician and case.status == Case.Status.EMPTY
    # Duplicates are refused with a message, not a crash.
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "P-77", "sex": "M"})
    assert response.status_code == 200 and "already exists" in response.content.decode()
    response = tech_client.post(
        reverse("diagnosis:case_create"),
        {"patient": patient.pk, "accession_number": "ACC-77", "specimen_type": "peripheral_blood"},
    )
    assert response.status_code == 200 and "already exists" in response.content.decode()


def test_future_birth_year_refused(tech_client):
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "P-78", "sex": "F", "birth_year": 2099})
    assert response.status_code == 200 and "future" in response.content.decode()


def test_a_storage_that_fails_mid_upload_gives_a_clear_message_and_leaves_no_half_stored_upload(
    tech_client, case, settings, monkeypatch, sent_messages, django_capture_on_commit_callbacks
):
    import errno
    import os
    from pathlib import Path

    from django.core.files.storage import FileSystemStorage

    saves = []
    real_save = FileSystemStorage._save

    def disk_fills_up(storage, name, content):
        saves.append(name)
        if len(saves) == 3:  # the first image and its thumbnail fit; the second image does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(storage.location) / name))
        return real_save(storage, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", disk_fills_up)
    files = [upload("a.png", image_bytes("PNG", seed=1)), upload("b.png", image_bytes("PNG", seed=2))]
    response, callbacks = post_files(tech_client, case, files, django_capture_on_commit_callbacks)

    assert response.status_code == 200  # the upload page again, with the reason
    page = response.content.decode()
    assert "could not be stored" in page and os.strerror(errno.ENOSPC) in page
    assert str(settings.MEDIA_ROOT) not in page
    assert not Smear.objects.exists() and callbacks == [] and sent_messages == []
    assert [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()] == []  # no orphaned files
