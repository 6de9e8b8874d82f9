"""Regression tests for the upload and image-serving holes of issue 13, each
through the real views: hostile names, polyglot images, camera MPO files,
degenerate shapes, misleading messages, too many files, and the races of an
upload with a sign-out or with another upload of the same image."""
import io
import os
import stat
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.db import IntegrityError
from django.urls import reverse
from PIL import Image

from diagnosis import services
from diagnosis.models import Smear
from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def post_upload(client, case, files, kind="field"):
    return client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {"kind": kind, "images": files})


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def polyglot_jpeg():
    """A valid JPEG whose comment segment carries an HTML script."""
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (120, 30, 60)).save(buf, "JPEG", comment=b"<html><script>alert(document.cookie)</script>")
    return buf.getvalue()


def test_polyglot_uploaded_as_html_is_stored_and_served_only_as_an_image(tech_client, case, make_user, client):
    response = post_upload(tech_client, case, [upload("poly.html", polyglot_jpeg(), "text/html")])
    assert response.status_code == 302
    smear = case.smears.get()
    assert smear.image.name.endswith(".jpg") and ".html" not in smear.image.name
    served = tech_client.get(reverse("diagnosis:smear_image", args=[smear.pk]))
    assert served["Content-Type"] == "image/jpeg"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served["Content-Security-Policy"] and "default-src 'none'" in served["Content-Security-Policy"]
    assert served["Content-Disposition"] == 'inline; filename="poly.jpg"'


def test_a_file_stored_with_an_html_name_before_the_fix_is_still_served_as_an_image(tech_client, smear_factory):
    smear = smear_factory(status="done")
    smear.image.storage.save(smear.image.name.replace(".png", ".html"), io.BytesIO(smear.image.open("rb").read()))
    smear.image.name = smear.image.name.replace(".png", ".html")
    smear.save(update_fields=["image"])
    served = tech_client.get(reverse("diagnosis:smear_image", args=[smear.pk]))
    assert served["Content-Type"] == "image/png"


def test_camera_mpo_jpeg_is_accepted_as_jpeg(tech_client, case):
    buf = io.BytesIO()
    first, second = Image.new("RGB", (120, 90), (10, 200, 30)), Image.new("RGB", (120, 90), (200, 10, 30))
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    response = post_upload(tech_client, case, [upload("camera.jpg", buf.getvalue()), upload("b.png", image_bytes(seed=2))])
    assert response.status_code == 302
    smear = case.smears.get(original_filename="camera.jpg")
    assert (smear.image_format, smear.width, smear.height) == ("JPEG", 120, 90)
    assert case.smears.count() == 2


@pytest.mark.parametrize("size,reason", [
    ((1, 1), "each side must be at least 64 pixels"),
    ((10000, 1), "each side must be at least 64 pixels"),
    ((1000, 64), "at most 5:1"),
])
def test_degenerate_images_are_refused_with_a_reason(tech_client, case, size, reason):
    response = post_upload(tech_client, case, [upload("odd.png", image_bytes("PNG", size=size))])
    assert response.status_code == 200  # the form again: nothing accepted
    assert any(reason in m for m in messages_of(response))
    assert not case.smears.exists()


def test_shape_limits_are_settings(tech_client, case, settings):
    settings.SMEAR_MIN_SIDE_PX, settings.SMEAR_MAX_ASPECT_RATIO = 16, 20
    assert post_upload(tech_client, case, [upload("strip.png", image_bytes("PNG", size=(320, 16)))]).status_code == 302


def test_byte_limit_message_never_shows_two_equal_sizes(tech_client, case, settings):
    settings.SMEAR_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
    response = post_upload(tech_client, case, [upload("big.png", b"\0" * (25 * 1024 * 1024 + 1))])
    [message] = [m for m in messages_of(response) if "big.png" in m]
    assert "26,214,401 bytes; the limit is 26,214,400 bytes (25.0 MB)" in message


def test_png_with_a_damaged_header_is_called_damaged_not_a_wrong_format(tech_client, case):
    data = bytearray(image_bytes("PNG"))
    data[12:16] = b"XXXX"  # the IHDR chunk type
    response = post_upload(tech_client, case, [upload("scan.png", bytes(data))])
    [message] = [m for m in messages_of(response) if "scan.png" in m]
    assert "starts like a PNG image but its header is damaged" in message


def test_more_files_than_allowed_gives_the_forms_message_not_a_bare_400(tech_client, case, settings):
    files = [upload(f"f{i}.png", image_bytes(seed=i)) for i in range(settings.SMEAR_MAX_FILES_PER_UPLOAD + 1)]
    url = reverse("diagnosis:smear_upload", args=[case.pk])
    response = tech_client.post(url, {"kind": "field", "images": files}, follow=True)
    assert response.status_code == 200 and response.redirect_chain == [(url, 302)]
    assert f"At most {settings.SMEAR_MAX_FILES_PER_UPLOAD} files can be uploaded at once" in response.content.decode()
    assert not case.smears.exists()


@pytest.mark.parametrize("path", ["//evil.example/x", "/\\evil.example/x", "///evil.example/"])
def test_too_many_files_never_redirects_to_another_host(tech_client, settings, path):
    """A crafted path must not become an open redirect. It is not the upload view, so the too-many-files
    answer (which comes before CSRF and sign-in) does not read the body at all; and the path it redirects
    to is refused should a crafted path ever reach it."""
    from django.test import RequestFactory

    from leukportal.middleware import same_site_path

    files = [upload(f"f{i}.png", image_bytes(seed=i)) for i in range(settings.SMEAR_MAX_FILES_PER_UPLOAD + 1)]
    # PATH_INFO set directly: the test client would read a leading "//" as a host, as a browser does.
    response = tech_client.post("/", {"kind": "field", "images": files}, PATH_INFO=path)
    assert response.status_code == 404 and "Location" not in response
    assert same_site_path(RequestFactory().post("/", PATH_INFO=path)) == "/"


def test_upload_racing_a_sign_out_stores_nothing(tech_client, case, pathologist, monkeypatch):
    """The sign-out commits while the upload is still checking its files."""
    from diagnosis.models import Case

    real_check = services.check_image

    def check_while_case_is_signed_out(file):
        Case.objects.filter(pk=case.pk).update(signed_out_at="2026-01-01T00:00:00Z", signed_out_by=pathologist)
        return real_check(file)

    monkeypatch.setattr(services.intake, "check_image", check_while_case_is_signed_out)
    response = post_upload(tech_client, case, [upload("late.png", image_bytes(seed=9))])
    assert response.status_code == 302
    assert not case.smears.exists()
    assert any("signed out" in m for m in messages_of(response))


def test_same_image_uploaded_twice_at_once_is_stored_once(tech_client, case, technician, monkeypatch):
    """The other upload stores the image after this one's duplicate check began."""
    data = image_bytes(seed=5)
    real_check = services.check_image

    def other_upload_lands_first(file):
        checked = real_check(file)
        monkeypatch.setattr(services.intake, "check_image", real_check)
        services.add_smears(case, [upload("other.png", data)], technician, kind="field")
        return checked

    monkeypatch.setattr(services.intake, "check_image", other_upload_lands_first)
    response = post_upload(tech_client, case, [upload("mine.png", data)])
    assert response.status_code == 200
    assert list(case.smears.values_list("original_filename", flat=True)) == ["other.png"]
    assert any("already in this case" in m for m in messages_of(response))


def test_database_refuses_a_second_copy_of_an_image_in_a_case(smear_factory):
    smear = smear_factory()
    twin = Smear(case=smear.case, sha256=smear.sha256, width=96, height=64, image_format="PNG", size_bytes=1,
                 original_filename="twin.png", uploaded_by=smear.uploaded_by, image="smears/twin.png")
    with pytest.raises(IntegrityError):
        twin.save()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_damaged_images_are_refused_with_a_reason_never_an_unexpected_error(fmt):
    """Bytes flipped all over real images: every result is a checked image or
    a refusal with a reason (a view turns anything else into a 500)."""
    import random

    rng = random.Random(13)
    original = image_bytes(fmt, size=(96, 80), seed=3)
    for _ in range(25):
        data = bytearray(original)
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.choice([len(data), rng.randrange(8, len(data))])
        try:
            services.check_image(upload(f"x.{fmt.lower()}", bytes(data[:cut])))
        except services.RejectedImage as exc:
            assert str(exc).endswith(".")


# --- Stored files are readable by the portal's own user and group only ------------------------------------------
@pytest.fixture
def usual_umask():
    """The umask most servers run with (022): a file created without an explicit mode is world-readable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def assert_private(media_root, name):
    """The stored file is rw for its owner, r for its group, nothing for others; so are the folders made for it."""
    path = media_root / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, name
    for folder in Path(name).parents[:-1]:
        assert stat.S_IMODE((media_root / folder).stat().st_mode) == 0o750, folder


@pytest.mark.parametrize("spooled", [False, True], ids=["in_memory", "spooled_to_disk"])
def test_an_uploaded_smear_is_not_readable_by_other_local_users(tech_client, case, media_root, usual_umask, settings,
                                                               spooled):
    if spooled:
        settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    assert post_upload(tech_client, case, [upload("field.png", image_bytes())]).status_code == 302
    smear = case.smears.get()
    assert_private(media_root, smear.image.name)
    assert_private(media_root, smear.thumbnail.name)


def test_heat_maps_and_export_zips_the_workers_write_are_not_readable_by_other_local_users(
        smear_factory, pathologist, media_root, usual_umask):
    from tests.review.conftest import result

    smear = smear_factory(status="processing")
    services.record_prediction(smear.pk, result("Pre"), 5)
    prediction = services.store_heatmap(Smear.objects.get(pk=smear.pk).prediction.pk, image_bytes("JPEG"))
    assert_private(media_root, prediction.heatmap.name)
    export, _ = services.request_export(pathologist)
    assert_private(media_root, services.build_export(export.pk).file.name)
