#!/usr/bin/env python
"""Accessibility audit of the portal's pages with axe-core in headless Chromium.

Builds a throw-away demo portal (its own SQLite database, media and broker
folders under a temporary directory) with realistic data made without any
model (fake predictions: classified fields with heat maps, single cells, a
case in review, a signed-out case with an addendum, a failed smear, a
rejected upload, an export, notifications), starts the development server on
it, signs in as each role and runs axe-core on every page; then, signed in as
the staff admin (a superuser of the Admin role), on the Django admin: its
index, each registered model's list and change (or view) form, a search, a
filtered list, the add forms, a form with errors, the delete and bulk-delete
confirmations, a case's history, the password change and the admin's sign-in;
five of them again in the dark theme.

axe-core is not a dependency of the portal; install it outside the repository:

    mkdir -p /tmp/axe && (cd /tmp/axe && npm init -y >/dev/null && npm install axe-core)
    .venv/bin/python scripts/axe_audit.py [--axe /tmp/axe/node_modules/axe-core/axe.min.js] [--json out.json]
                                          [--only portal|admin|<part of a page name>]

Prints, per page, the violations by impact (rules, and elements in brackets).
Exits 0 when axe-core or Chromium is missing (with the reason), otherwise
1 when a serious or critical violation is found.
"""
import argparse
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from browser_pages import demo_users, load_all_images, wait_for  # noqa: E402 (beside this script)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PASSWORD = "audit-passphrase-not-for-production"
ROLE_USERS = {"phone": "tech", "admin-dark": "admin"}  # who signs in for a role that is a way of seeing a page
IMPACTS = ("critical", "serious", "moderate", "minor")


def png(seed, size=(224, 224)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (230, 215, 225))
    ImageDraw.Draw(img).ellipse([40 + seed * 3 % 60, 50, 170, 170], fill=(120, 60, 150 + seed % 100))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (255, 40 + seed % 200, 0)).save(buf, "JPEG")
    return buf.getvalue()


def staging(stage, confidence=0.8, in_domain=True):
    others = [s for s in ("Benign", "Early", "Pre", "Pro") if s != stage]
    return {"stage": stage, "probabilities": {stage: confidence, **{s: (1 - confidence) / 3 for s in others}},
            "model": "efficientnet_b0", "model_version": "1.0-audit", "in_domain": in_domain,
            "domain_score": 0.5 if in_domain else 0.01}


def screening(p_blast, in_domain=True):
    return {"label": "blast" if p_blast >= 0.31 else "normal",
            "probabilities": {"blast": p_blast, "normal": 1 - p_blast}, "threshold": 0.31,
            "model": "screening_b0", "model_version": "1.0-audit", "in_domain": in_domain,
            "domain_score": 0.5 if in_domain else 0.01}


def build_demo():
    """The demo data; returns the addresses and ids that pages() needs."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.core.files.uploadedfile import SimpleUploadedFile

    from accounts.models import User
    from diagnosis import services
    from diagnosis.models import Case, Patient

    admin, tech, path = demo_users(PASSWORD)
    User.objects.create_user("new@lab.example", PASSWORD)  # no role yet

    seed = {"n": 0}

    def files(n, bad=False):
        out = []
        for _ in range(n):
            seed["n"] += 1
            out.append(SimpleUploadedFile(f"image-{seed['n']:03d}.png", png(seed["n"])))
        if bad:
            out.append(SimpleUploadedFile("lab-report.pdf", b"%PDF-1.4 not an image"))
        return out

    def classify(case, results, kind="field", heatmaps=True, bad=False):
        """Upload one image per result and record it (None: left queued; "fail": failed); bad: add a PDF."""
        smears = services.add_smears(case, files(len(results), bad=bad), tech, kind=kind).accepted
        for smear, result in zip(smears, results):
            if result is None:
                continue
            services.claim_smear(smear.pk)
            if result == "fail":
                services.mark_failed(smear.pk, "The image could not be decoded.")
                continue
            services.record_prediction(smear.pk, result, 5)
            smear.refresh_from_db()
            if heatmaps and smear.prediction.in_domain:
                services.store_heatmap(smear.prediction.pk, jpeg(smear.pk), smear.prediction.label)
        return smears

    p1 = Patient.objects.create(lab_id="P-1042", sex="F", birth_year=1984, created_by=tech)
    p2 = Patient.objects.create(lab_id="P-2210", sex="M", birth_year=1979, created_by=tech)
    p3 = Patient.objects.create(lab_id="P-4410", sex="M", birth_year=2011, created_by=tech)

    def case(patient, acc, note=""):
        return Case.objects.create(patient=patient, accession_number=acc, clinical_note=note, created_by=tech,
                                   collection_date=datetime.date(2026, 11, 2))

    signed = case(p1, "ACC-2026-0101", "Follow-up after induction.")
    classify(signed, [staging("Benign", 0.9), staging("Benign", 0.85), staging("Early", 0.5)])
    services.confirm_remaining(signed, path)
    signed.refresh_from_db()
    services.sign_out(signed, path, "Benign", "Reactive lymphocytes; no blasts.")
    services.add_addendum(signed, path, "Flow cytometry confirms: no blasts.")

    review = case(p1, "ACC-2026-0187", "Suspected relapse; WBC 38x10^9/L.")
    smears = classify(review, [staging("Pre", 0.8), staging("Pro", 0.45), staging("Early", 0.7),
                               staging("Pre", 0.3, in_domain=False)], bad=True)
    services.review_smear(smears[0], path, "Pre")
    services.review_smear(smears[1], path, "Pre", "Blasts with fine chromatin.")
    services.mark_not_assessable(smears[2], path, "Out of focus.")

    cells = case(p3, "ACC-2026-0205", "Single cells segmented from the marrow aspirate.")
    classify(cells, [screening(0.9), screening(0.6), screening(0.1), screening(0.05), screening(0.2, in_domain=False)],
             kind="cell")

    pending = case(p2, "ACC-2026-0199", "Repeat film requested by haematologist.")
    classify(pending, [None, None, "fail"], heatmaps=False)

    # A signed-out cell case for the dashboard's screen check.
    cells2 = case(p3, "ACC-2026-0210")
    for smear in classify(cells2, [screening(0.9), screening(0.1), screening(0.7)], kind="cell", heatmaps=False):
        smear.refresh_from_db()
        services.review_smear(smear, path, smear.prediction.label)
    cells2.refresh_from_db()
    services.sign_out(cells2, path, "", "Screened cells reviewed.")

    export, _ = services.request_export(path)
    services.build_export(export.pk)

    # The admin's e-mail address list: a signed-up account whose address is not confirmed yet.
    from allauth.account.models import EmailAddress
    from django.contrib.auth.models import Group

    from diagnosis.models import AuditEvent, CaseAddendum, RejectedUpload

    newcomer = User.objects.get(email="new@lab.example")
    address = EmailAddress.objects.create(user=newcomer, email=newcomer.email, primary=True, verified=False)
    field = review.smears.filter(prediction__isnull=False).first()

    return {
        "signed": signed.get_absolute_url(), "review": review.get_absolute_url(), "cells": cells.get_absolute_url(),
        "pending": pending.get_absolute_url(), "patient": p1.get_absolute_url(),
        "review_id": review.pk, "cells_id": cells.pk, "signed_id": signed.pk, "pending_id": pending.pk,
        # The admin's pages.
        "patient_id": p1.pk, "patient2_id": p2.pk, "smear_id": field.pk, "prediction_id": field.prediction.pk,
        "event_id": AuditEvent.objects.filter(case=review).latest("pk").pk,
        "addendum_id": CaseAddendum.objects.get(case=signed).pk, "rejected_id": RejectedUpload.objects.get().pk,
        "export_id": export.pk, "user_id": tech.pk, "newcomer_id": newcomer.pk,
        "group_id": Group.objects.get(name="Technician").pk, "address_id": address.pk,
    }


def pages(ids):
    """(role, page name, path[, action]); role None: signed out; action: a function of ACTIONS run first."""
    return [
        (None, "login", "/accounts/login/"),
        (None, "signup", "/accounts/signup/"),
        (None, "password reset", "/accounts/password/reset/"),
        ("new", "pending role", "/accounts/pending/"),
        ("tech", "case list", "/cases/"),
        ("tech", "case list (filtered, no match)", "/cases/?q=nothing&state=signed_out"),
        ("tech", "new case", "/cases/new/"),
        ("tech", "new patient", "/patients/new/"),
        ("tech", "patient list", "/patients/"),
        ("tech", "patient detail", ids["patient"]),
        ("tech", "case detail (in review)", ids["review"]),
        ("tech", "case detail (pending, failed smear)", ids["pending"]),
        ("tech", "case detail (cells)", ids["cells"]),
        ("tech", "upload", f"/cases/{ids['pending_id']}/upload/"),
        ("tech", "my uploads", "/uploads/"),
        ("tech", "notifications (tech)", "/notifications/"),
        ("tech", "password change", "/accounts/password/change/"),
        ("path", "review queue", "/review/"),
        ("path", "review (fields)", f"/cases/{ids['review_id']}/review/"),
        ("path", "review (cells)", f"/cases/{ids['cells_id']}/review/"),
        ("path", "case detail (signed out)", ids["signed"]),
        ("path", "gallery", f"/cases/{ids['review_id']}/gallery/"),
        ("path", "report (signed out)", f"/cases/{ids['signed_id']}/report/"),
        ("path", "report (cells, preliminary)", f"/cases/{ids['cells_id']}/report/"),
        ("path", "dashboard", "/review/dashboard/"),
        ("path", "exports", "/review/exports/"),
        ("path", "notifications (path)", "/notifications/"),
        ("path", "two-factor", "/accounts/2fa/"),
        ("tech", "the models", "/models/"),
        ("path", "model card (staging)", "/models/staging/"),
        ("path", "model card (screening)", "/models/screening/"),
        # States reached by a click: what axe sees only once they are open.
        ("path", "review: heat map on, zoomed, not-assessable open", f"/cases/{ids['review_id']}/review/",
         "review_tools"),
        ("tech", "account menu open", "/cases/", "account_menu"),
        ("tech", "upload with a rejected file (messages)", f"/cases/{ids['pending_id']}/upload/", "upload_bad_file"),
        ("phone", "phone: case list, menu open", "/cases/", "phone_menu"),
    ] + admin_pages(ids)


def admin_pages(ids):
    """The Django admin, as the staff admin; every page name starts with "admin"."""
    d, a = "/admin/diagnosis", "/admin/accounts"
    return [
        (None, "admin: sign-in (redirects to the portal's)", "/admin/login/?next=/admin/"),
        ("admin", "admin: index", "/admin/"),
        ("admin", "admin: app index (diagnosis)", f"{d}/"),
        ("admin", "admin: patients", f"{d}/patient/"),
        ("admin", "admin: patients, search", f"{d}/patient/?q=P-1042"),
        ("admin", "admin: patient change", f"{d}/patient/{ids['patient_id']}/change/"),
        ("admin", "admin: patient change, with errors", f"{d}/patient/{ids['patient_id']}/change/",
         "admin_form_errors"),
        ("admin", "admin: patient add", f"{d}/patient/add/"),
        ("admin", "admin: patient delete confirmation", f"{d}/patient/{ids['patient2_id']}/delete/"),
        ("admin", "admin: patients, bulk delete confirmation", f"{d}/patient/", "admin_bulk_delete"),
        ("admin", "admin: cases", f"{d}/case/"),
        ("admin", "admin: cases, search", f"{d}/case/?q=ACC-2026-01"),
        ("admin", "admin: cases, search with no match", f"{d}/case/?q=nothing"),
        ("admin", "admin: cases, filtered", f"{d}/case/?signed_out=no&status=done"),
        ("admin", "admin: case change (in review)", f"{d}/case/{ids['review_id']}/change/"),
        ("admin", "admin: case view (signed out)", f"{d}/case/{ids['signed_id']}/change/"),
        ("admin", "admin: case add", f"{d}/case/add/"),
        ("admin", "admin: case add, patient list open", f"{d}/case/add/", "admin_autocomplete"),
        ("admin", "admin: case history", f"{d}/case/{ids['review_id']}/history/"),
        ("admin", "admin: smears", f"{d}/smear/"),
        ("admin", "admin: smears, filtered", f"{d}/smear/?status__exact=failed"),
        ("admin", "admin: smear view", f"{d}/smear/{ids['smear_id']}/change/"),
        ("admin", "admin: predictions", f"{d}/prediction/"),
        ("admin", "admin: prediction view", f"{d}/prediction/{ids['prediction_id']}/change/"),
        ("admin", "admin: audit events", f"{d}/auditevent/"),
        ("admin", "admin: audit event view", f"{d}/auditevent/{ids['event_id']}/change/"),
        ("admin", "admin: addenda", f"{d}/caseaddendum/"),
        ("admin", "admin: addendum view", f"{d}/caseaddendum/{ids['addendum_id']}/change/"),
        ("admin", "admin: rejected uploads", f"{d}/rejectedupload/"),
        ("admin", "admin: rejected upload view", f"{d}/rejectedupload/{ids['rejected_id']}/change/"),
        ("admin", "admin: exports", f"{d}/reviewedexport/"),
        ("admin", "admin: export view", f"{d}/reviewedexport/{ids['export_id']}/change/"),
        ("admin", "admin: users", f"{a}/user/"),
        ("admin", "admin: users, filtered", f"{a}/user/?is_staff__exact=0"),
        ("admin", "admin: user change", f"{a}/user/{ids['user_id']}/change/"),
        ("admin", "admin: user change (unconfirmed address)", f"{a}/user/{ids['newcomer_id']}/change/"),
        ("admin", "admin: user add", f"{a}/user/add/"),
        ("admin", "admin: user password", f"{a}/user/{ids['user_id']}/password/"),
        ("admin", "admin: groups", "/admin/auth/group/"),
        ("admin", "admin: group change", f"/admin/auth/group/{ids['group_id']}/change/"),
        ("admin", "admin: e-mail addresses", "/admin/account/emailaddress/"),
        ("admin", "admin: e-mail address change", f"/admin/account/emailaddress/{ids['address_id']}/change/"),
        ("admin", "admin: authenticators (none)", "/admin/mfa/authenticator/"),
        ("admin", "admin: password change", "/admin/password_change/"),
        # The admin follows the system's dark theme (and has a switch for it).
        ("admin-dark", "admin (dark): index", "/admin/"),
        ("admin-dark", "admin (dark): cases, filtered", f"{d}/case/?signed_out=no&status=done"),
        ("admin-dark", "admin (dark): case change (in review)", f"{d}/case/{ids['review_id']}/change/"),
        ("admin-dark", "admin (dark): user change", f"{a}/user/{ids['user_id']}/change/"),
        ("admin-dark", "admin (dark): patient change, with errors", f"{d}/patient/{ids['patient_id']}/change/",
         "admin_form_errors"),
    ]


def review_tools(page):
    page.check("[data-heat-toggle]")
    page.evaluate("() => document.querySelectorAll('[data-zoom]').forEach(z => { z.value = 2; "
                  "z.dispatchEvent(new Event('input')); })")
    page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")


def account_menu(page):
    page.click("[data-account-menu]")
    page.wait_for_selector(".dropdown-menu.show")


def upload_bad_file(page):
    page.check("input[name=kind][value=field]")
    page.set_input_files("input[type=file]", files=[{"name": "lab-report.pdf", "mimeType": "application/pdf",
                                                      "buffer": b"%PDF-1.4 not an image"}])
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_selector(".alert")


def phone_menu(page):
    page.click(".navbar-toggler")
    page.wait_for_selector("#mainnav.show")


def admin_form_errors(page):
    page.fill("input[name=lab_id]", "")
    with page.expect_navigation():
        page.click("input[name=_save]")
    page.wait_for_selector(".errornote")


def admin_bulk_delete(page):
    page.check("#action-toggle")
    page.select_option("select[name=action]", "delete_selected")
    with page.expect_navigation():
        page.click("button[name=index]")
    page.wait_for_selector("body.delete-confirmation", state="attached")


def admin_autocomplete(page):
    page.click(".select2-selection")
    page.wait_for_selector(".select2-results__option:not(.loading-results)")


ACTIONS = {"review_tools": review_tools, "account_menu": account_menu, "upload_bad_file": upload_bad_file,
           "phone_menu": phone_menu, "admin_form_errors": admin_form_errors, "admin_bulk_delete": admin_bulk_delete,
           "admin_autocomplete": admin_autocomplete}


def wanted(name, only):
    """--only: "portal" or "admin" for one part of the audit, otherwise a part of the page names."""
    if not only:
        return True
    if only in ("portal", "admin"):
        return name.startswith("admin") == (only == "admin")
    return only in name


def login(page, base, email):
    page.goto(base + "/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def audit(page, axe, incomplete=False):
    # Lazy images count: load them all, as a person scrolling would.
    load_all_images(page)
    page.add_script_tag(path=axe)
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    if incomplete:  # what axe could not decide, for a person to look at
        for item in result["incomplete"]:
            for node in item["nodes"]:
                message = node["any"][0]["message"] if node["any"] else ""
                print(f"  needs a look: {page.url} {item['id']} {node['target']}: {message}", file=sys.stderr)
    return result["violations"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axe", default=os.environ.get("AXE_JS", "/tmp/axe/node_modules/axe-core/axe.min.js"))
    parser.add_argument("--json", help="write every violation (rule, impact, elements) here")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--only", help='"portal" or "admin": audit only those pages; anything else: only pages '
                                       'whose name contains it')
    parser.add_argument("--incomplete", action="store_true", help="also list what axe could not decide (stderr)")
    args = parser.parse_args()
    if not Path(args.axe).is_file():
        print(f"SKIPPED: axe-core not found at {args.axe}. Install it outside the repository:\n"
              "  mkdir -p /tmp/axe && (cd /tmp/axe && npm init -y >/dev/null && npm install axe-core)")
        return 0
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("SKIPPED: Playwright for Python is not installed (make install-train).")
        return 0
    if not shutil.which(CHROMIUM):
        print(f"SKIPPED: no Chromium at {CHROMIUM} (set CHROMIUM).")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="leukportal-axe-"))
    os.environ.update(
        DEBUG="1", DATABASE_URL=f"sqlite:///{tmp / 'demo.sqlite3'}", MEDIA_ROOT=str(tmp / "media"),
        CELERY_BROKER_URL="filesystem://", CELERY_BROKER_DIR=str(tmp / "broker"),
        DJANGO_SETTINGS_MODULE="leukportal.settings", MFA_REQUIRED_ROLES="",
    )
    sys.path.insert(0, str(REPO))
    ids = build_demo()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{args.port}", "--noreload"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_for(base + "/accounts/login/")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            contexts = {}
            for role, name, path, *action in pages(ids):
                if not wanted(name, args.only):
                    continue
                if role not in contexts:
                    # bypass_csp: the portal's CSP refuses inline scripts, and axe is injected as one.
                    phone = role == "phone"  # a technician on a phone
                    ctx = browser.new_context(viewport={"width": 390, "height": 844} if phone else
                                              {"width": 1280, "height": 900}, bypass_csp=True,
                                              color_scheme="dark" if role == "admin-dark" else "light")
                    page = ctx.new_page()
                    if role:
                        login(page, base, f"{ROLE_USERS.get(role, role)}@lab.example")
                    contexts[role] = page
                page = contexts[role]
                page.goto(base + path)
                if action:
                    ACTIONS[action[0]](page)
                results[name] = {"role": role or "anonymous", "path": path,
                                 "violations": audit(page, args.axe, args.incomplete)}
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(n) for n in results) + 2
    print(f"{'page':<{width}}" + "".join(f"{i:>14}" for i in IMPACTS))
    totals = {i: [0, 0] for i in IMPACTS}
    for name, r in results.items():
        row = {i: [0, 0] for i in IMPACTS}
        for v in r["violations"]:
            row[v["impact"]][0] += 1
            row[v["impact"]][1] += len(v["nodes"])
        for i in IMPACTS:
            totals[i][0] += row[i][0]
            totals[i][1] += row[i][1]
        print(f"{name:<{width}}" + "".join(f"{f'{a} ({b})':>14}" for a, b in (row[i] for i in IMPACTS)))
    print(f"{'TOTAL':<{width}}" + "".join(f"{f'{a} ({b})':>14}" for a, b in (totals[i] for i in IMPACTS)))
    print("(rules violated, elements in brackets)")
    for name, r in results.items():
        for v in r["violations"]:
            print(f"  {name}: [{v['impact']}] {v['id']}: {v['help']} — " +
                  "; ".join(" ".join(n["target"]) if isinstance(n["target"][0], str) else str(n["target"])
                            for n in v["nodes"][:4]) + (" …" if len(v["nodes"]) > 4 else ""))
    if args.json:
        slim = {name: {**r, "violations": [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                                             "nodes": [{"target": n["target"], "html": n["html"][:300],
                                                        "summary": n.get("failureSummary", "")} for n in v["nodes"]]}
                                            for v in r["violations"]]} for name, r in results.items()}
        Path(args.json).write_text(json.dumps(slim, indent=1))
    return 1 if totals["critical"][0] + totals["serious"][0] else 0


if __name__ == "__main__":
    sys.exit(main())
