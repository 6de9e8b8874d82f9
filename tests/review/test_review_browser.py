"""In headless Chromium: a technician uploads smears (one rejected), the worker
classifies them (real predictor and Grad-CAM when available), a pathologist
works the queue, toggles the heat map, reclassifies with a reason, signs out,
and opens the report. Screenshots go to $SCREENSHOT_DIR (`make screenshots` sets it to
docs/screenshots/ to refresh the README's pictures), else to a temporary folder, so a test
run never rewrites committed files."""
import io
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from diagnosis import tasks
from diagnosis.models import AuditEvent, Case, Patient
from tests.portal_testutils import browser_login

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "taleqani-all"
SHOTS = Path(os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "leukportal-screenshots")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def smear_files(tmp_path):
    paths = []
    for label in ("Pre", "Pro"):
        found = sorted((DATA / label).glob("*.jpg"))[:1] if (DATA / label).is_dir() else []
        if found:
            paths.append(found[0])
            continue
        img = Image.new("RGB", (224, 224), (230, 215, 225))
        ImageDraw.Draw(img).ellipse([60, 60 + len(paths) * 10, 160, 160], fill=(120, 60, 150))
        path = tmp_path / f"{label.lower()}.png"
        img.save(path)
        paths.append(path)
    bad = tmp_path / "scanner-notes.txt"
    bad.write_text("not an image")
    return paths + [bad]


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Thumbnails load lazily: load them all first, or those below the window are blank in a full-page shot.
    # (page.wait_for_function would evaluate a string, which the portal's CSP refuses.)
    page.evaluate("() => Promise.all(Array.from(document.images, img => { img.loading = 'eager'; "
                  "return img.decode().catch(() => null); }))")
    page.screenshot(path=str(SHOTS / name), full_page=True)


def test_upload_review_sign_out_report(browser, live_server, technician, pathologist, tmp_path, sent_messages,
                                      queued_heatmaps, monkeypatch):
    base = live_server.url
    patient = Patient.objects.create(lab_id="P-5150", sex="M", birth_year=1991, created_by=technician)
    case = Case.objects.create(patient=patient, accession_number="ACC-2026-0420", created_by=technician,
                               clinical_note="Suspected ALL; blasts on film.")

    tech = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    browser_login(tech, base, technician)
    tech.goto(base + f"/cases/{case.pk}/upload/")
    tech.check("input[name=kind][value=field]")
    tech.set_input_files("input[type=file]", [str(p) for p in smear_files(tmp_path)])
    tech.click("input[type=submit], button[type=submit]")
    tech.wait_for_url(base + case.get_absolute_url())
    assert "scanner-notes.txt" in tech.inner_text("[data-rejected]")
    assert len(sent_messages) == 2

    # The worker's part, in this process: the first message classifies the upload as one batch,
    # the second finds its smear taken; then the heat maps queued after the batch.
    assert [tasks.classify_smear(smear_id) for smear_id in sent_messages] == ["done", "skipped"]
    for prediction_id in queued_heatmaps:
        tasks.compute_heatmap(prediction_id)
    tech.goto(base + "/uploads/")
    assert tech.locator("#smears .smear-status-done").count() == 2
    assert "not an image" in tech.inner_text("[data-rejected]")
    shot(tech, "upload_queue.png")

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    browser_login(page, base, pathologist)
    page.goto(base + "/review/")
    assert page.locator(f'[data-review-queue] tr[data-case="{case.pk}"]').count() == 1
    shot(page, "review_queue.png")
    page.click(f'tr[data-case="{case.pk}"] a:has-text("Review")')
    page.wait_for_url(base + f"/cases/{case.pk}/review/")

    smears = list(case.smears.select_related("prediction").order_by("pk"))
    first, second = smears
    if first.prediction.heatmap:
        page.check(f"#heat-{first.pk}")
        assert page.locator(f'#smear-{first.pk} .viewer.show-heat').count() == 1
    shot(page, "review.png")

    # By keyboard: the first smear is current; "c" confirms the model's label.
    assert page.get_attribute("body", "data-current-smear") == str(first.pk)
    page.keyboard.press("c")
    page.wait_for_selector(f"#smear-{first.pk} [data-review-state]")
    # After the save the next unreviewed smear is current; a digit picks a label (model order), and a
    # change needs its reason before Enter saves it.
    assert page.get_attribute("body", "data-current-smear") == str(second.pk)
    labels = ("Benign", "Early", "Pre", "Pro")
    other = next(label for label in ("Pre", "Pro", "Early", "Benign") if label != second.prediction.label)
    page.keyboard.press(str(labels.index(other) + 1))
    assert page.input_value(f"#label-{second.pk}") == other
    page.keyboard.press("Enter")  # refused without a reason: the reason box gets the focus instead
    page.keyboard.type("Coarser chromatin than the model suggests.")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("k")
    assert page.get_attribute("body", "data-current-smear") == str(first.pk)
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#smear-{second.pk} [data-review-state]")
    second.refresh_from_db()
    assert second.review_label == other and second.review_reason.startswith("Coarser")

    page.select_option("#final-stage", other)
    page.fill("#comment", "Morphology consistent with ALL; see flow cytometry.")
    page.click("button[value=sign_out]")
    page.wait_for_url(base + case.get_absolute_url())
    assert "Signed out (locked)" in page.inner_text("[data-signout]")
    actions = set(AuditEvent.objects.filter(case=case).values_list("action", flat=True))
    assert {"upload", "upload_rejected", "prediction", "confirm", "override", "sign_out"} <= actions
    shot(page, "case_signed_out.png")

    # The technician was told in the portal that the upload is classified.
    tech.goto(base + "/cases/")
    assert tech.inner_text("[data-unread]") == "1"
    tech.click("[data-notifications-link]")
    assert "2 of 2 images classified" in tech.inner_text("[data-notifications]")

    page.goto(base + f"/cases/{case.pk}/report/")
    assert case.accession_number in page.inner_text("[data-report]")
    assert pathologist.email in page.inner_text("[data-report]")
    shot(page, "report.png")
    page.emulate_media(media="print")
    assert not page.is_visible("nav.navbar")
    # Printed from the browser, the pages are numbered (CSS @page margin box).
    from pypdf import PdfReader

    printed = PdfReader(io.BytesIO(page.pdf(format="A4")))
    assert f"Page 1 of {len(printed.pages)}" in printed.pages[0].extract_text()

    # The reviewed smears leave the portal as a zip a worker builds: asked for, watched, downloaded.
    export_messages = []
    monkeypatch.setattr(tasks.build_export, "apply_async", lambda args=None, **options: export_messages.append(args[0]))
    page.emulate_media(media="screen")
    page.goto(base + "/review/dashboard/")
    page.click("text=Export reviewed smears (zip)")
    page.click("[data-request-export]")
    assert page.get_attribute("[data-exports] tbody tr", "data-export") == "queued"
    assert tasks.build_export(export_messages[0]) == "done"
    page.reload()
    assert page.get_attribute("[data-exports] tbody tr", "data-export") == "ready"
    shot(page, "exports.png")
    with page.expect_download() as download:
        page.click("[data-exports] a:has-text('Download')")
    import zipfile

    names = zipfile.ZipFile(download.value.path()).namelist()
    assert len([n for n in names if n.startswith("reviewed/staging/") and not n.endswith(".csv")]) == 2
