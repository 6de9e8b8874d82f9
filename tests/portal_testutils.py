"""Helpers shared by the portal tests."""
import io

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

PASSWORD = "a-long-test-passphrase-42"


def image_bytes(fmt="PNG", size=(96, 64), color=(200, 80, 120), seed=0):
    """A small real image in the given format. Different seeds give different
    bytes (and so different sha256)."""
    img = Image.new("RGB", size, color)
    img.putpixel((seed % size[0], 0), (seed % 256, (seed // 256) % 256, 0))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def upload(name, data, content_type="application/octet-stream"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def browser_login(page, base, user):
    """Sign in through the real login form, as a person would."""
    page.goto(base + "/accounts/login/")
    page.fill("input[name=login]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/cases/")


def exported_zip_names(client):
    """Ask for the reviewed-smear export as a user does, let the worker build
    it (services.build_export, what the Celery task runs), download the zip:
    the names in it."""
    import zipfile

    from django.urls import reverse

    from diagnosis import services
    from diagnosis.models import ReviewedExport

    assert client.post(reverse("diagnosis:exports")).status_code == 302
    export = ReviewedExport.objects.latest("pk")
    services.build_export(export.pk)
    response = client.get(reverse("diagnosis:export_download", args=[export.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
