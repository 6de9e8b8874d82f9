"""The same picture saved as other bytes (a PNG and a TIFF of one field, a TIFF with other preview pages, an image
whose EXIF turns it the way another file already is) is found by its pixels as the model reads them
(Smear.pixels_sha256), not only by its bytes: refused as a duplicate within a case, said and flagged when it is in
another patient's case. A lossy re-encoding (JPEG again) changes the pixels and is not found."""
import io

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse
from PIL import Image, ImageDraw

from diagnosis import selectors, services
from diagnosis.models import Case, Patient, Smear
from tests.portal_testutils import upload

pytestmark = pytest.mark.django_db


def field_picture(size=(320, 240)):
    img = Image.new("RGB", size, (228, 206, 214))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0] // 5, size[1] // 5], fill=(70, 30, 100))
    draw.ellipse([size[0] // 3, size[1] // 3, size[0] * 2 // 3, size[1] * 2 // 3], fill=(125, 60, 150))
    return img


def encoded(img, fmt, **options):
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def post(client, case, *files):
    return client.post(reverse("diagnosis:smear_upload", args=[case.pk]),
                       {"kind": "field", "images": [upload(name, data) for name, data in files]}, follow=True)


@pytest.fixture
def other_patients_case(technician):
    other = Patient.objects.create(lab_id="P-0002", sex="M", birth_year=1990, created_by=technician)
    return Case.objects.create(patient=other, accession_number="ACC-0002", created_by=technician)


def test_the_pixel_hash_is_of_the_picture_the_model_reads_not_of_the_bytes():
    picture = field_picture()
    png, tiff = encoded(picture, "PNG"), encoded(picture, "TIFF", compression="tiff_lzw")
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to display": the stored pixels lie the other way
    turned = encoded(picture.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    hashes = {services.check_image(upload(name, data)).pixels_sha256
              for name, data in (("a.png", png), ("a.tif", tiff), ("turned.png", turned))}
    assert len(hashes) == 1
    other = field_picture()
    other.putpixel((100, 100), (0, 0, 0))  # one pixel differs
    assert services.check_image(upload("b.png", encoded(other, "PNG"))).pixels_sha256 not in hashes
    # The same pixel bytes laid out at another size are another picture.
    rows = np.random.default_rng(0).integers(0, 256, (120, 240, 3), dtype=np.uint8)
    wide, tall = Image.fromarray(rows), Image.fromarray(rows.reshape(240, 120, 3))
    assert wide.tobytes() == tall.tobytes()
    assert (services.check_image(upload("w.png", encoded(wide, "PNG"))).pixels_sha256
            != services.check_image(upload("t.png", encoded(tall, "PNG"))).pixels_sha256)


def test_the_same_picture_as_another_file_is_refused_in_one_case(tech_client, case):
    picture = field_picture()
    post(tech_client, case, ("field 7.png", encoded(picture, "PNG")))
    page = post(tech_client, case, ("field 7.tif", encoded(picture, "TIFF", compression="tiff_lzw"))).content.decode()
    assert case.smears.count() == 1
    assert "the same picture, pixel for pixel (saved as another file), is already in this case (as “field 7.png”)" in (
        page.replace("&#x27;", "'"))


def test_a_tiff_with_other_preview_pages_is_the_same_picture(tech_client, case):
    picture = field_picture((640, 480))
    previews = []
    for scale in (4, 8):
        preview = picture.resize((640 // scale, 480 // scale))
        preview.encoderinfo = {"tiffinfo": {254: 1}}
        previews.append(preview)
    one = encoded(picture, "TIFF", save_all=True, append_images=previews[:1])
    two = encoded(picture, "TIFF", save_all=True, append_images=previews)
    assert one != two
    post(tech_client, case, ("camera.tif", one), ("camera again.tif", two))
    assert case.smears.count() == 1


def test_the_same_picture_in_another_patients_case_is_said_and_flagged(
        tech_client, case, other_patients_case, classified_smears):
    picture = field_picture()
    post(tech_client, other_patients_case, ("a.png", encoded(picture, "PNG")))
    page = post(tech_client, case, ("b.tif", encoded(picture, "TIFF"))).content.decode()
    assert case.smears.count() == 1
    assert "the same image is already in case ACC-0002 of patient P-0002: check that it belongs to this patient." in page
    mine = case.smears.get()
    assert selectors.images_in_other_patients_cases(case) == {mine.pk: ["ACC-0002 (patient P-0002)"]}
    classified_smears(case)
    [entry] = [e for e in selectors.review_queue() if e.case.pk == case.pk]
    assert entry.other_patient_images == 1
    assert mine not in selectors.confirmable_smears(case)  # confirm-all leaves it to be looked at


def test_a_lossy_re_encoding_is_not_the_same_picture(tech_client, case, other_patients_case):
    picture = field_picture()
    first = encoded(picture, "JPEG", quality=90)
    again = encoded(Image.open(io.BytesIO(first)), "JPEG", quality=90)
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(first))), np.asarray(Image.open(io.BytesIO(again))))
    post(tech_client, other_patients_case, ("a.jpg", first))
    post(tech_client, case, ("b.jpg", again))
    assert selectors.images_in_other_patients_cases(case) == {}


def test_hash_smear_pixels_fills_smears_stored_before_and_they_are_found_then(
        tech_client, case, other_patients_case, capsys):
    picture = field_picture()
    post(tech_client, other_patients_case, ("a.png", encoded(picture, "PNG")))
    post(tech_client, case, ("b.tif", encoded(picture, "TIFF")))
    Smear.objects.update(pixels_sha256="")  # as stored before the pixel hash existed
    assert selectors.images_in_other_patients_cases(case) == {}
    call_command("hash_smear_pixels")
    assert "2 smear(s) hashed." in capsys.readouterr().out
    assert Smear.objects.filter(pixels_sha256="").count() == 0
    assert list(selectors.images_in_other_patients_cases(case).values()) == [["ACC-0002 (patient P-0002)"]]


@pytest.fixture
def classified_smears():
    """classified_smears(case): every queued smear of the case given a stored prediction (the worker's part)."""
    from tests.review.conftest import result

    def classify(case):
        for smear in case.smears.all():
            Smear.objects.filter(pk=smear.pk).update(status=Smear.Status.PROCESSING)
            services.record_prediction(smear.pk, result("Pre"), 5)
    return classify
