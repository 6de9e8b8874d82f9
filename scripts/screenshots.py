#!/usr/bin/env python
"""Take the README screenshots in real headless Chromium.

Builds a throw-away demo portal (its own SQLite database, media folder and
broker folder under a temporary directory), classifies demo smears with the
real staging model (`ml.load_predictor()`, in this process), starts the
development server on it and drives Chromium through Playwright.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Demo images come from ../shared/data/taleqani-all/<class>/ when present,
otherwise they are generated.
"""
import argparse
import datetime
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from browser_pages import demo_users, load_all_images, wait_for  # noqa: E402 (beside this script)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "taleqani-all"
CELLS = REPO.parent / "shared" / "data" / "cnmc-fold1"  # single cells: all/ (blasts) and hem/ (normal)
SCREENING_WEIGHTS = REPO / "ml" / "weights" / "screening.pt"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "demo-passphrase-not-for-production"


def demo_files(label, count, seed):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image, ImageDraw

    folder = DATA / label
    paths = sorted(folder.glob("*.jpg"))[seed : seed + count] if folder.is_dir() else []
    if paths:
        return [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    files = []
    for i in range(count):
        img = Image.new("RGB", (224, 224), (230, 215, 225))
        ImageDraw.Draw(img).ellipse([60 + i * 5, 60, 160, 160], fill=(120, 60, 150))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        files.append(SimpleUploadedFile(f"{label.lower()}-{seed + i}.png", buf.getvalue()))
    return files


def build_demo():
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from diagnosis import services
    from diagnosis.models import Case, Patient, Smear
    from diagnosis.tasks import classify_smear, compute_heatmap

    def classify_now(smears):
        """The workers' part, synchronously with the real models: the batch, then its heat maps."""
        for smear in smears:
            classify_smear(smear.pk)
        for smear in smears:
            prediction = getattr(Smear.objects.select_related("prediction").get(pk=smear.pk), "prediction", None)
            if prediction is not None and prediction.in_domain:
                compute_heatmap(prediction.pk)

    admin, tech, pathologist = demo_users(PASSWORD)

    plan = [  # patient, accession, note, [(class folder, n images)], classify?
        ("P-1042", "ACC-2026-0101", "Follow-up after induction.", [("Benign", 3)], True),
        ("P-1042", "ACC-2026-0187", "Suspected relapse; WBC 38×10⁹/L.", [("Pre", 3), ("Early", 1)], True),
        ("P-2210", "ACC-2026-0190", "Newly referred, blasts on film.", [("Pro", 3)], True),
        ("P-3307", "ACC-2026-0193", "Lymphocytosis, query ALL.", [("Early", 2)], True),
        ("P-3307", "ACC-2026-0199", "Repeat film requested by haematologist.", [("Pre", 2)], False),
    ]
    patients = {}
    for n, (lab_id, accession, note, images, classify) in enumerate(plan):
        if lab_id not in patients:
            patients[lab_id] = Patient.objects.create(
                lab_id=lab_id, sex="FMF"[len(patients) % 3], birth_year=1960 + 9 * len(patients), created_by=tech
            )
        case = Case.objects.create(patient=patients[lab_id], accession_number=accession, clinical_note=note, created_by=tech,
                                   collection_date=datetime.date(2026, 11, 2 + n))
        files = [f for label, count in images for f in demo_files(label, count, seed=n * 3)]
        if accession == "ACC-2026-0187" and (CELLS / "hem").is_dir():
            # A single segmented cell uploaded as a field by mistake: the domain check says so, no stage is shown.
            from django.core.files.uploadedfile import SimpleUploadedFile

            cell = sorted((CELLS / "hem").glob("*.png"))[-1]
            files.append(SimpleUploadedFile(cell.name, cell.read_bytes()))
        outcome = services.add_smears(case, files, tech, kind="field")
        if classify:
            classify_now(outcome.accepted)
    # One case signed out, one in review, so the list shows the states.
    signed = Case.objects.get(accession_number="ACC-2026-0101")
    services.confirm_remaining(signed, pathologist)
    signed.refresh_from_db()
    services.sign_out(signed, pathologist, signed.suggested_stage or "Benign", "Reactive lymphocytes; no blasts.")
    in_review = Case.objects.get(accession_number="ACC-2026-0190")
    first = in_review.smears.order_by("pk").first()
    services.review_smear(first, pathologist, first.prediction.label)
    screening_case = None
    if SCREENING_WEIGHTS.is_file() and (CELLS / "all").is_dir() and (CELLS / "hem").is_dir():
        from django.core.files.uploadedfile import SimpleUploadedFile

        patient = Patient.objects.create(lab_id="P-4410", sex="M", birth_year=2011, created_by=tech)
        screening_case = Case.objects.create(patient=patient, accession_number="ACC-2026-0205", created_by=tech,
                                             clinical_note="Single cells segmented from the marrow aspirate.")
        paths = sorted((CELLS / "all").glob("*.png"))[:4] + sorted((CELLS / "hem").glob("*.png"))[:4]
        files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
        classify_now(services.add_smears(screening_case, files, tech, kind="cell").accepted)
    return (Case.objects.get(accession_number="ACC-2026-0187"), Case.objects.get(accession_number="ACC-2026-0199"),
            screening_case)


def full_page_shot(page, path):
    """A full-page screenshot with every image in it: thumbnails load lazily, so those below the window would
    be blank boxes unless they are loaded first."""
    load_all_images(page)
    page.screenshot(path=path, full_page=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="leukportal-demo-"))
    os.environ.update(
        DEBUG="1",
        DATABASE_URL=f"sqlite:///{tmp / 'demo.sqlite3'}",
        MEDIA_ROOT=str(tmp / "media"),
        CELERY_BROKER_URL="filesystem://",
        CELERY_BROKER_DIR=str(tmp / "broker"),  # nothing consumes it: demo only
        DJANGO_SETTINGS_MODULE="leukportal.settings",
        MFA_REQUIRED_ROLES="",  # demo accounts sign in with a password only (no authenticator app in a headless browser)
    )
    sys.path.insert(0, str(REPO))
    detail_case, pending_case, screening_case = build_demo()
    screening_url = screening_case.get_absolute_url() if screening_case else None
    # Resolve URLs now: Django refuses database access inside Playwright's event loop.
    detail_url, pending_url = detail_case.get_absolute_url(), pending_case.get_absolute_url()
    upload_url, patient_url = f"/cases/{pending_case.pk}/upload/", detail_case.patient.get_absolute_url()
    gallery_url = f"/cases/{detail_case.pk}/gallery/"

    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{args.port}", "--noreload"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(base + "/accounts/login/")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "/accounts/login/")
            page.screenshot(path=str(out / "login.png"))
            page.fill("input[name=login]", "tech@lab.example")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/cases/")
            full_page_shot(page, str(out / "case_list.png"))
            page.goto(base + detail_url)
            page.wait_for_selector(".probs:not([hidden])")
            full_page_shot(page, str(out / "case_detail.png"))
            if screening_url:
                page.goto(base + screening_url)
                full_page_shot(page, str(out / "case_detail_screening.png"))
            page.goto(base + upload_url)
            demo = sorted((DATA / "Pro").glob("*.jpg"))[-1:] if (DATA / "Pro").is_dir() else []
            bad = tmp / "lab-report.pdf"
            bad.write_bytes(b"%PDF-1.4 not an image")
            page.check("input[name=kind][value=field]")
            page.set_input_files("input[type=file]", [str(f) for f in demo] + [str(bad)])
            full_page_shot(page, str(out / "upload.png"))
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url(base + pending_url)
            full_page_shot(page, str(out / "case_detail_after_upload.png"))
            page.goto(base + patient_url)
            full_page_shot(page, str(out / "patient_detail.png"))
            page.goto(base + gallery_url)
            full_page_shot(page, str(out / "gallery.png"))
            page.goto(base + "/notifications/")
            full_page_shot(page, str(out / "notifications.png"))
            page.goto(base + "/models/")
            full_page_shot(page, str(out / "models.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(f"Screenshots written to {out}")


if __name__ == "__main__":
    main()
