"""Every stored smear is viewable in the browser as the model reads it: 8-bit
JPEG, PNG and BMP as their stored bytes, TIFF (and a 16-bit or transparent PNG)
as a PNG rendition of the same pixels in the orientation the model sees, made
on first view and kept; ``?original=1`` downloads the untouched file; a stored file that no
longer decodes is a 404, never a server error; multi-image files (multi-page
TIFF, animated PNG) are refused at upload with the reason."""
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.urls import reverse
from PIL import Image, ImageDraw

from diagnosis import services
from diagnosis.models import RejectedUpload
from diagnosis.services import display
from ml.runtime.images import load_image
from tests.portal_testutils import browser_login, image_bytes, upload

pytestmark = pytest.mark.django_db

SHOTS = Path(os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "leukportal-screenshots")


def smear_picture(size=(160, 120), mode="RGB"):
    """A picture whose orientation shows: a dark block in the top-left corner."""
    img = Image.new("RGB", size, (225, 205, 215))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0] // 4, size[1] // 4], fill=(60, 20, 90))
    draw.ellipse([size[0] // 3, size[1] // 3, size[0] * 2 // 3, size[1] * 2 // 3], fill=(130, 60, 150))
    if mode == "I;16":  # a 12-bit microscope camera: the values use only part of the 16-bit range
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 16)
    return img.convert(mode)


def encoded(img, fmt, **options):
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def store_as(smear, data, fmt, name):
    """Replace a factory smear's file by ``data``, recorded as detected format ``fmt``."""
    with Image.open(io.BytesIO(data)) as img:
        smear.width, smear.height = img.size
    smear.image_format, smear.original_filename, smear.size_bytes = fmt, name, len(data)
    smear.image.save("smear", ContentFile(data), save=False)
    smear.save()
    return smear


def image_url(smear, original=False):
    return reverse("diagnosis:smear_image", args=[smear.pk]) + ("?original=1" if original else "")


def body(response):
    return b"".join(response.streaming_content)


def assert_private_image_headers(response, content_type):
    assert response["Content-Type"] == content_type
    assert response["Cache-Control"] == "no-store, private"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cross-Origin-Resource-Policy"] == "same-origin"


def test_a_tiff_smear_is_shown_as_a_png_of_the_same_pixels(path_client, smear_factory):
    picture = smear_picture((640, 480))
    smear = store_as(smear_factory(status="done"), encoded(picture, "TIFF", compression="tiff_lzw"), "TIFF",
                     "field 7.tiff")
    response = path_client.get(image_url(smear))
    assert response.status_code == 200
    assert_private_image_headers(response, "image/png")
    assert response["Content-Disposition"] == 'inline; filename="field_7.png"'
    shown = Image.open(io.BytesIO(body(response)))
    assert shown.format == "PNG" and shown.size == (smear.width, smear.height) == (640, 480)
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(picture))


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "I;16"])
def test_the_tiff_rendition_is_what_the_model_reads(path_client, smear_factory, mode):
    data = encoded(smear_picture(mode=mode), "TIFF")
    smear = store_as(smear_factory(status="done"), data, "TIFF", "field.tif")
    shown = Image.open(io.BytesIO(body(path_client.get(image_url(smear)))))
    assert shown.mode in ("RGB", "L")  # 8-bit: a 16-bit image rescaled as the model rescales it
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(load_image(data)))


def test_the_tiff_rendition_has_the_orientation_the_model_sees(path_client, smear_factory):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encoded(smear_picture((160, 120)), "TIFF", exif=exif)
    smear = store_as(smear_factory(status="done"), data, "TIFF", "rotated.tif")
    shown = Image.open(io.BytesIO(body(path_client.get(image_url(smear)))))
    model_sees = load_image(data)
    assert shown.size == model_sees.size == (120, 160)
    assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(model_sees))


def test_the_original_tiff_downloads_untouched(path_client, smear_factory):
    data = encoded(smear_picture(), "TIFF", compression="tiff_lzw")
    smear = store_as(smear_factory(status="done"), data, "TIFF", "field 7.tiff")
    response = path_client.get(image_url(smear, original=True))
    assert response.status_code == 200
    assert_private_image_headers(response, "image/tiff")
    assert response["Content-Disposition"] == 'attachment; filename="field_7.tif"'
    assert body(response) == data


@pytest.mark.parametrize("fmt,content_type,extension", [
    ("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("BMP", "image/bmp", "bmp"),
])
def test_formats_browsers_show_are_served_as_stored(path_client, smear_factory, fmt, content_type, extension):
    data = encoded(smear_picture(), fmt)
    smear = store_as(smear_factory(status="done"), data, fmt, f"field.{extension}")
    shown = path_client.get(image_url(smear))
    assert_private_image_headers(shown, content_type)
    assert shown["Content-Disposition"] == f'inline; filename="field.{extension}"'
    assert body(shown) == data
    original = path_client.get(image_url(smear, original=True))
    assert_private_image_headers(original, content_type)
    assert original["Content-Disposition"] == f'attachment; filename="field.{extension}"'
    assert body(original) == data


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's words on the garbage file
@pytest.mark.parametrize("damage", ["truncated", "garbage", "png recorded as tiff", "missing"])
def test_a_stored_tiff_that_no_longer_decodes_is_not_found(path_client, smear_factory, damage):
    good = encoded(smear_picture((640, 480)), "TIFF")
    smear = store_as(smear_factory(status="done"), good, "TIFF", "field.tif")
    path_client.raise_request_exception = False  # a server error must show as 500 here, not raise
    damaged = {"truncated": good[: len(good) // 2], "garbage": b"II*\x00" + bytes(range(256)) * 12,
               "png recorded as tiff": encoded(smear_picture(), "PNG"), "missing": None}[damage]
    with open(smear.image.path, "wb") as handle:
        handle.write(damaged or b"")
    if damaged is None:
        os.remove(smear.image.path)
    response = path_client.get(image_url(smear))
    assert response.status_code == 404
    if damaged is not None:  # the untouched file can still be fetched, for whoever investigates it
        assert body(path_client.get(image_url(smear, original=True))) == damaged


def test_a_stored_tiff_over_the_pixel_limit_is_not_decoded(path_client, smear_factory, settings):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture((640, 480)), "TIFF"), "TIFF", "big.tif")
    settings.SMEAR_MAX_PIXELS = 640 * 480 - 1
    assert path_client.get(image_url(smear)).status_code == 404


@pytest.mark.parametrize("original", [False, True])
def test_who_may_fetch_a_smear_image_is_unchanged(client, smear_factory, technician, no_role_user, original):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "field.tif")
    url = image_url(smear, original=original)
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))
    client.force_login(no_role_user)
    assert client.get(url).url == reverse("pending_role")
    technician.groups.get().permissions.remove(Permission.objects.get(codename="view_smear"))
    client.force_login(technician)
    assert client.get(url).status_code == 403


def test_the_review_screen_links_the_original_file_as_a_download(path_client, smear_factory, case):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "field.tif")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert f'<a href="{image_url(smear, original=True)}" download data-original-file>original file</a>' in page
    assert f'<img src="{image_url(smear)}"' in page


# --------------------------------------------------------------------------- the rendition is made once

def test_a_tiff_rendition_is_made_on_first_view_and_kept(path_client, smear_factory, monkeypatch):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture((640, 480)), "TIFF"), "TIFF", "f.tif")
    updated_at = smear.updated_at
    first = body(path_client.get(image_url(smear)))
    smear.refresh_from_db()
    assert smear.display_image.name.startswith("renditions/") and smear.display_image.name.endswith(".png")
    assert smear.display_image.read() == first
    assert smear.updated_at == updated_at  # showing an image is not a change to the smear

    def no_decoding(*args, **kwargs):
        raise AssertionError("the kept rendition should be served without decoding the TIFF again")

    monkeypatch.setattr(display, "render", no_decoding)
    again = path_client.get(image_url(smear))
    assert_private_image_headers(again, "image/png")
    assert again["Content-Disposition"] == 'inline; filename="f.png"'
    assert body(again) == first


def test_a_kept_rendition_that_storage_lost_is_made_again(path_client, smear_factory):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "f.tif")
    first = body(path_client.get(image_url(smear)))
    smear.refresh_from_db()
    lost = smear.display_image.name
    os.remove(smear.display_image.path)
    assert body(path_client.get(image_url(smear))) == first
    smear.refresh_from_db()
    assert smear.display_image.name != lost and os.path.exists(smear.display_image.path)


def test_when_two_views_make_a_rendition_at_once_one_is_kept_and_the_other_removed(smear_factory):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "f.tif")
    stale = type(smear).objects.get(pk=smear.pk)  # a second request, loaded before the first kept its rendition
    display.displayed_image(smear)
    png = display.render(stale, stale.image)
    display._keep_rendition(stale, png)
    assert stale.display_image.name == smear.display_image.name  # the first one's
    left = sorted(p.name for p in Path(smear.display_image.path).parent.iterdir())
    assert left == [Path(smear.display_image.name).name]


@pytest.mark.parametrize("mode,why", [
    ("I;16", "a 12-bit camera's 16-bit PNG: the model stretches its range, a browser shows it nearly black"),
    ("RGBA", "transparency: the model lays it over white"),
    ("LA", "grey with transparency"),
])
def test_a_png_a_browser_would_show_otherwise_is_shown_as_the_model_reads_it(path_client, smear_factory, mode, why):
    picture = smear_picture(mode=mode)
    if mode in ("RGBA", "LA"):
        picture.putalpha(Image.linear_gradient("L").resize(picture.size))
    data = encoded(picture, "PNG")
    smear = store_as(smear_factory(status="done"), data, "PNG", "field.png")
    response = path_client.get(image_url(smear))
    assert_private_image_headers(response, "image/png")
    shown = body(response)
    assert shown != data
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shown)).convert("RGB")), np.asarray(load_image(data)))
    assert body(path_client.get(image_url(smear, original=True))) == data  # the stored file is untouched


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "P"),
                                      ("BMP", "RGB")])
def test_an_8_bit_image_a_browser_shows_as_the_model_does_keeps_no_rendition(path_client, smear_factory, fmt, mode):
    data = encoded(smear_picture(mode=mode), fmt)
    smear = store_as(smear_factory(status="done"), data, fmt, "field")
    assert body(path_client.get(image_url(smear))) == data
    smear.refresh_from_db()
    assert not smear.display_image


# --------------------------------------------------------------------------- upload: one image per file

def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def multi_page_tiff(pages=3):
    frames = [smear_picture().rotate(90 * n) if n else smear_picture() for n in range(pages)]
    frames = [f.resize((160, 120)) for f in frames]
    return encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def animated_png():
    frames = [smear_picture(), smear_picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("name,data,reason", [
    ("stack.tif", multi_page_tiff(3), "the file holds 3 images (pages); only single-image files are accepted"),
    ("moving.png", animated_png(), "the file holds 2 images (animation frames); only single-image files"),
])
def test_a_multi_image_file_is_refused_at_upload_with_the_reason(tech_client, case, name, data, reason):
    assert Image.open(io.BytesIO(data)).n_frames > 1
    response = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {
        "kind": "field", "images": [upload(name, data), upload("single.tif", encoded(smear_picture(), "TIFF"))]})
    assert response.status_code == 302  # the single-page file of the same upload is stored
    assert [m for m in messages_of(response) if m.startswith(f"“{name}” was not accepted: {reason}")]
    assert list(case.smears.values_list("original_filename", "image_format")) == [("single.tif", "TIFF")]
    rejected = RejectedUpload.objects.get(case=case)
    assert rejected.filename == name and rejected.reason.startswith(reason)


def test_check_image_refuses_a_multi_page_tiff_and_keeps_camera_mpo(tech_client):
    with pytest.raises(services.RejectedImage, match="holds 2 images"):
        services.check_image(upload("two.tif", multi_page_tiff(2)))
    buf = io.BytesIO()
    smear_picture().save(buf, "MPO", save_all=True, append_images=[smear_picture()])
    assert services.check_image(upload("camera.jpg", buf.getvalue())).image_format == "JPEG"
    assert services.check_image(upload("one.png", image_bytes("PNG", size=(96, 96)))).image_format == "PNG"


def tiff_with_pages(first, *others, marks=()):
    """A TIFF of ``first`` and further pages; ``marks`` holds the NewSubfileType (tag 254) of each page, 1 for a
    reduced-resolution preview."""
    pages = [first.copy(), *[p.copy() for p in others]]
    for page, mark in zip(pages, marks):
        if mark is not None:
            page.encoderinfo = {"tiffinfo": {254: mark}}
    if marks and marks[0] is not None:
        return encoded(pages[0], "TIFF", tiffinfo={254: marks[0]}, save_all=True, append_images=pages[1:])
    return encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def test_a_tiff_with_a_preview_page_is_accepted_and_its_first_page_is_the_image(tech_client, case):
    picture = smear_picture((640, 480))
    data = tiff_with_pages(picture, picture.resize((160, 120)), marks=(None, 1))  # as microscope cameras write
    checked = services.check_image(upload("camera.tif", data))
    assert (checked.image_format, checked.width, checked.height) == ("TIFF", 640, 480)
    response = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]),
                                {"kind": "field", "images": [upload("camera.tif", data)]})
    assert response.status_code == 302
    smear = case.smears.get()
    assert np.array_equal(np.asarray(load_image(smear.image.open("rb").read())), np.asarray(picture))


@pytest.mark.parametrize("second,marks,why", [
    ("full", (None, None), "two images"),
    ("full", (None, 1), "a page marked preview but as large as the first is not a preview"),
    ("small", (1, None), "the first page is the preview, the image comes later"),
    ("small", (None, 0), "a smaller page not marked as a preview is an image of its own"),
])
def test_a_tiff_whose_other_pages_are_not_previews_is_still_refused(second, marks, why):
    picture = smear_picture((640, 480))
    other = picture.rotate(180) if second == "full" else picture.resize((160, 120))
    with pytest.raises(services.RejectedImage, match="the file holds 2 images"):
        services.check_image(upload("stack.tif", tiff_with_pages(picture, other, marks=marks)))


def test_a_tiff_of_many_pages_is_refused_without_walking_them_all():
    """Second audit round (R5): Pillow's n_frames walks every page in quadratic time; a 24 MB file of 190,000 tiny
    'preview' pages held a web process for 157 s, and was accepted."""
    import time

    picture = smear_picture((640, 480))
    tiny = picture.resize((8, 6))
    data = tiff_with_pages(picture, *[tiny] * 3000, marks=(None, *[1] * 3000))
    started = time.perf_counter()
    with pytest.raises(services.RejectedImage, match="more than 8 images"):
        services.check_image(upload("pyramid.tif", data))
    assert time.perf_counter() - started < 2


def tiff_listing_strips(n, width=600, height=600, sub_images=False):
    """A one-page RGB TIFF whose StripOffsets/StripByteCounts list ``n`` strips (one per row, repeated);
    sub_images: the page also names a SubIFD (here its own directory: only the tag matters to the check)."""
    import struct

    out = bytearray(b"II*\x00" + struct.pack("<I", 0))
    bits = len(out)
    out += struct.pack("<HHH", 8, 8, 8)
    pixels = len(out)
    out += bytes(np.asarray(smear_picture((width, height))).tobytes())
    offsets = len(out)
    out += struct.pack(f"<{n}I", *[pixels + (i % height) * width * 3 for i in range(n)])
    counts = len(out)
    out += struct.pack(f"<{n}I", *([width * 3] * n))
    directory = len(out)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, n, offsets), (277, 3, 1, 3), (278, 4, 1, 1), (279, 4, n, counts)]
    if sub_images:
        entries.append((330, 4, 1, directory))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    out += struct.pack("<I", 0)
    struct.pack_into("<I", out, 4, directory)
    return bytes(out)


def test_a_tiff_page_cut_into_millions_of_strips_is_refused_before_pillow_reads_it():
    """Third audit round: Pillow builds an object per strip when it opens a page; 3 million strips took 17.8 s and
    2.1 GB of a web process, and were accepted."""
    import time

    assert services.check_image(upload("rows.tif", tiff_listing_strips(600))).width == 600  # one strip a row: fine
    started = time.perf_counter()
    with pytest.raises(services.RejectedImage, match="cut into 300,000 strips or tiles"):
        services.check_image(upload("hostile.tif", tiff_listing_strips(300_000)))
    assert time.perf_counter() - started < 1


def test_a_tiff_with_images_hidden_below_its_page_is_refused():
    """Sub-images (SubIFDs) are not pages: Pillow counts one image, and the portal would have shown, classified and
    signed it while the stored original carried others nobody saw."""
    assert services.check_image(upload("plain.tif", tiff_listing_strips(600))).width == 600
    with pytest.raises(services.RejectedImage, match="further images below its pages"):
        services.check_image(upload("raw.tif", tiff_listing_strips(600, sub_images=True)))
    # Review of the change: a directory cut short (its link to a next page missing) hid its tags from the check,
    # and Pillow opens such a page all the same.
    with pytest.raises(services.RejectedImage, match="further images below its pages"):
        services.check_image(upload("cut.tif", tiff_listing_strips(600, sub_images=True)[:-4]))
    with pytest.raises(services.RejectedImage, match="cut into 300,000 strips or tiles"):
        services.check_image(upload("cut-strips.tif", tiff_listing_strips(300_000)[:-4]))


def test_a_preview_must_be_a_real_reduction_and_must_decode():
    picture = smear_picture((640, 480))
    almost = tiff_with_pages(picture, picture.resize((600, 450)), marks=(None, 1))  # a second image, in effect
    with pytest.raises(services.RejectedImage, match="the file holds 2 images"):
        services.check_image(upload("second.tif", almost))
    damaged = bytearray(encoded(picture, "TIFF", save_all=True, compression="tiff_deflate",
                                append_images=[_as_preview(picture.resize((160, 120)))]))
    with Image.open(io.BytesIO(bytes(damaged))) as img:
        img.seek(1)
        offset, length = img.tag_v2[273][0], img.tag_v2[279][0]  # the preview's strip
    assert services.check_image(upload("ok.tif", bytes(damaged))).width == 640  # intact, it is accepted
    damaged[offset + 4:offset + length] = bytes(length - 4)  # deflate data that no longer inflates
    with pytest.raises(services.RejectedImage, match="damaged|truncated"):
        services.check_image(upload("junk-preview.tif", bytes(damaged)))


def _as_preview(page):
    page.encoderinfo = {"tiffinfo": {254: 1}, "compression": "tiff_deflate"}
    return page


def test_the_thumbnail_is_what_the_model_reads():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the browser and the model turn it upright
    rotated = encoded(smear_picture((640, 480)), "JPEG", exif=exif, quality=95)
    thumb = Image.open(io.BytesIO(services.check_image(upload("rotated.jpg", rotated)).thumbnail_jpeg))
    assert thumb.width < thumb.height  # upright, as load_image and the browser show it
    twelve_bit = encoded(smear_picture((640, 480), mode="I;16"), "PNG")
    thumb = np.asarray(Image.open(io.BytesIO(services.check_image(upload("camera.png", twelve_bit)).thumbnail_jpeg)))
    model_sees = np.asarray(load_image(twelve_bit).resize((thumb.shape[1], thumb.shape[0])))
    assert abs(float(thumb.mean()) - float(model_sees.mean())) < 5  # stretched as the model stretches it, not white


def call_rebuild_thumbnails(*args):
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    call_command("rebuild_thumbnails", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def old_style_thumbnail(data):
    """A thumbnail as made before 2026-11-25: from the pixels as decoded, no EXIF orientation, 16-bit clipped."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail(services.THUMBNAIL_SIZE)
    return encoded(img, "JPEG")


def test_rebuild_thumbnails_remakes_those_made_sideways_and_leaves_the_rest(smear_factory):
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encoded(smear_picture((640, 480)), "JPEG", exif=exif)
    sideways = store_as(smear_factory(status="done"), rotated, "JPEG", "rotated.jpg")
    sideways.thumbnail.save("t.jpg", ContentFile(old_style_thumbnail(rotated)))
    old_file = sideways.thumbnail.path
    png = encoded(smear_picture((640, 480)), "PNG")
    plain = store_as(smear_factory(status="done"), png, "PNG", "plain.png")
    plain.thumbnail.save("t.jpg", ContentFile(old_style_thumbnail(png)))
    plain_thumbnail = plain.thumbnail.name
    assert Image.open(sideways.thumbnail.path).width > Image.open(sideways.thumbnail.path).height

    out, err = call_rebuild_thumbnails()
    assert "2 smear(s): 1 thumbnail(s) made again." in out and not err
    sideways.refresh_from_db()
    plain.refresh_from_db()
    upright = Image.open(sideways.thumbnail.path)
    assert upright.width < upright.height  # as the model and the browser show it
    assert not os.path.exists(old_file)  # replaced, not left behind
    assert plain.thumbnail.name == plain_thumbnail
    assert "2 thumbnail(s) made again" in call_rebuild_thumbnails("--all")[0]


def test_rebuild_thumbnails_names_an_image_it_cannot_read_and_keeps_its_thumbnail(smear_factory):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "lost.tif")
    thumbnail = smear.thumbnail.name
    os.remove(smear.image.path)
    out, err = call_rebuild_thumbnails("--all")
    assert "0 thumbnail(s) made again, 1 image(s) that could not be read." in out
    assert f"Smear {smear.pk}" in err and "missing from storage" in err
    smear.refresh_from_db()
    assert smear.thumbnail.name == thumbnail


# --------------------------------------------------------------------------- in the browser

@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_tiff_smear_shows_on_the_review_screen(browser, live_server, pathologist, smear_factory, case):
    from tests.review.conftest import result

    picture = smear_picture((1200, 900))
    smear = store_as(smear_factory(status="processing"), encoded(picture, "TIFF"), "TIFF", "field.tif")
    services.record_prediction(smear.pk, result("Pre"), 5)
    heat = Image.blend(picture, Image.new("RGB", picture.size, (255, 0, 0)), 0.4)
    services.store_heatmap(smear.prediction.pk, encoded(heat, "JPEG"), explained_class="Pre")

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    browser_login(page, live_server.url, pathologist)
    page.goto(live_server.url + reverse("diagnosis:case_review", args=[case.pk]))
    card = page.locator(f"#smear-{smear.pk}")
    image = card.locator(".viewer-inner img:not(.heat)")
    image.evaluate("img => img.decode()")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [1200, 900]
    box = image.bounding_box()
    assert box["width"] > 300 and abs(box["height"] / box["width"] - 0.75) < 0.01  # not a blank, zero-wide box
    card.locator("[data-heat-toggle]").check()
    heat_box = card.locator(".viewer-inner img.heat").bounding_box()
    assert abs(heat_box["height"] - box["height"]) < 1 and abs(heat_box["width"] - box["width"]) < 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(path=str(SHOTS / "review_tiff_smear.png"))

    with page.expect_download() as download:
        card.locator("[data-original-file]").click()
    assert download.value.suggested_filename == "field.tif"
    assert Path(download.value.path()).read_bytes() == smear.image.open("rb").read()


def test_downloading_the_original_is_recorded_in_the_cases_audit_trail_and_viewing_is_not(
        path_client, smear_factory, case):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "field 7.tiff")
    recorded = case.audit_events.filter(action="original_download")
    path_client.get(image_url(smear))
    assert not recorded.exists()
    body(path_client.get(image_url(smear, original=True)))
    event = recorded.get()
    assert event.smear == smear and event.actor.pk == int(path_client.session["_auth_user_id"])
    assert event.new_value == "field 7.tiff"
    page = path_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    assert "Original image downloaded" in page


def test_a_lost_original_is_a_404_and_no_download_is_recorded(path_client, smear_factory, case):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "field.tif")
    smear.image.storage.delete(smear.image.name)
    assert path_client.get(image_url(smear, original=True)).status_code == 404
    assert not case.audit_events.filter(action="original_download").exists()


class OneStagePredictor:
    def predict(self, images):
        return [{"stage": "Pre", "probabilities": {"Benign": 0.05, "Early": 0.05, "Pre": 0.85, "Pro": 0.05},
                 "model": "fake", "model_version": "0-test", "in_domain": False, "domain_score": 0.0}
                for _ in images]


@pytest.mark.parametrize("fmt,rendition", [("TIFF", True), ("JPEG", False)])
def test_the_worker_makes_the_rendition_once_the_prediction_is_stored(
        path_client, smear_factory, monkeypatch, fmt, rendition):
    from diagnosis import tasks

    monkeypatch.setattr(tasks, "load_predictor_for", lambda kind: OneStagePredictor())
    data = encoded(smear_picture((640, 480)), fmt)
    smear = store_as(smear_factory(), data, fmt, f"field.{fmt.lower()}")
    assert tasks.classify_smear(smear.pk) == "done"
    smear.refresh_from_db()
    assert bool(smear.display_image) is rendition
    if rendition:  # the view serves the kept file: nothing is decoded in the web process
        monkeypatch.setattr(display, "render", lambda *args: pytest.fail("decoded again on first view"))
        shown = Image.open(io.BytesIO(body(path_client.get(image_url(smear)))))
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(load_image(data)))


def test_a_rendition_the_worker_cannot_make_leaves_the_prediction_stored(smear_factory, monkeypatch):
    from diagnosis import tasks

    monkeypatch.setattr(tasks, "load_predictor_for", lambda kind: OneStagePredictor())
    monkeypatch.setattr(display, "render", lambda *args: (_ for _ in ()).throw(MemoryError("no room")))
    smear = store_as(smear_factory(), encoded(smear_picture(), "TIFF"), "TIFF", "field.tif")
    assert tasks.classify_smear(smear.pk) == "done"
    smear.refresh_from_db()
    assert smear.status == "done" and smear.prediction.label == "Pre" and not smear.display_image



def test_renditions_stop_at_the_task_budget_and_at_the_soft_time_limit(smear_factory, monkeypatch):
    """Review of the change: a batch of 40-megapixel TIFFs (~5 s each) could outlast the classification task's
    time limit, and the soft limit was swallowed like any failure."""
    from celery.exceptions import SoftTimeLimitExceeded

    from diagnosis import tasks

    smears = [store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", f"f{i}.tif")
              for i in range(3)]
    made = []
    monkeypatch.setattr(tasks.services, "prepare_displayed_image", lambda smear: made.append(smear.pk))
    monkeypatch.setattr(tasks, "RENDITION_BUDGET_S", -1)  # spent before the first
    tasks.prepare_displays(smears)
    assert made == []

    def soft_limit_on_second(smear):
        made.append(smear.pk)
        if len(made) == 2:
            raise SoftTimeLimitExceeded()
    monkeypatch.setattr(tasks, "RENDITION_BUDGET_S", 30)
    monkeypatch.setattr(tasks.services, "prepare_displayed_image", soft_limit_on_second)
    tasks.prepare_displays(smears)
    assert made == [smears[0].pk, smears[1].pk]


def test_a_head_request_for_the_original_records_no_download(path_client, smear_factory, case):
    smear = store_as(smear_factory(status="done"), encoded(smear_picture(), "TIFF"), "TIFF", "field.tif")
    assert path_client.head(image_url(smear, original=True)).status_code == 200
    assert not case.audit_events.filter(action="original_download").exists()
