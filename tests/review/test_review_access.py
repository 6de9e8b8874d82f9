"""Who may open the review pages: anonymous -> login, no role -> waiting page,
technicians refused review and sign-out, pathologists and admins allowed."""
import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROLES = ("Technician", "Pathologist", "Admin")
REVIEWERS = ("Pathologist", "Admin")


@pytest.fixture
def objects(classified, case, make_user):
    from diagnosis import services
    from tests.portal_testutils import image_bytes

    smear = classified("Pre")
    services.store_heatmap(smear.prediction.pk, image_bytes("JPEG"))
    export, _ = services.request_export(make_user("Pathologist"))
    services.build_export(export.pk)
    return {"case": case, "smear": smear, "export": export}


# (url name, kwargs key, roles allowed, method, data)
PAGES = [
    ("diagnosis:review_queue", None, REVIEWERS, "get", None),
    ("diagnosis:dashboard", None, REVIEWERS, "get", None),
    ("diagnosis:exports", None, REVIEWERS, "get", None),
    ("diagnosis:exports", None, REVIEWERS, "post", None),
    ("diagnosis:export_download", "export", REVIEWERS, "get", None),
    ("diagnosis:case_review", "case", REVIEWERS, "get", None),
    ("diagnosis:case_report", "case", ROLES, "get", None),
    ("diagnosis:case_report_pdf", "case", ROLES, "get", None),
    ("diagnosis:smear_heatmap", "smear", ROLES, "get", None),
    ("diagnosis:upload_queue", None, ("Technician", "Admin"), "get", None),
    ("diagnosis:upload_queue_status", None, ("Technician", "Admin"), "get", None),
    ("diagnosis:smear_review", "smear", REVIEWERS, "post", {"label": "Pre"}),
    ("diagnosis:case_finalize", "case", REVIEWERS, "post", {"final_stage": "Pre", "action": "save"}),
    ("diagnosis:case_finalize", "case", REVIEWERS, "post", {"final_stage": "Pre", "action": "sign_out"}),
    ("diagnosis:case_addendum", "case", REVIEWERS, "post", {"text": "x"}),
    ("diagnosis:smear_assessable", "smear", REVIEWERS, "post", {"action": "not_assessable", "reason": "smudged"}),
    ("diagnosis:case_confirm_remaining", "case", REVIEWERS, "post", None),
    ("diagnosis:case_gallery", "case", ROLES, "get", None),
    ("diagnosis:notifications", None, ROLES, "get", None),
    ("diagnosis:notifications_read", None, ROLES, "post", None),
]


def url_for(name, key, objects):
    return reverse(name, args=[objects[key].pk]) if key else reverse(name)


@pytest.mark.parametrize("name,key,allowed,method,data", PAGES)
def test_anonymous_is_sent_to_login(client, objects, name, key, allowed, method, data):
    response = getattr(client, method)(url_for(name, key, objects), data or {})
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize("name,key,allowed,method,data", PAGES)
def test_user_without_role_waits(client, objects, no_role_user, name, key, allowed, method, data):
    client.force_login(no_role_user)
    response = getattr(client, method)(url_for(name, key, objects), data or {})
    assert response.status_code == 302
    assert response.url == reverse("pending_role")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,key,allowed,method,data", PAGES)
def test_roles(client, objects, make_user, role, name, key, allowed, method, data):
    client.force_login(make_user(role))
    if name in ("diagnosis:case_finalize", "diagnosis:case_confirm_remaining"):  # the version the page sends
        objects["case"].refresh_from_db()
        data = {**(data or {}), "case_version": objects["case"].review_version}
    response = getattr(client, method)(url_for(name, key, objects), data or {})
    if role not in allowed:
        assert response.status_code == 403
    elif method == "post":
        assert response.status_code == 302
    else:
        assert response.status_code == 200


def test_technician_cannot_review_or_sign_out(client, technician, objects):
    from diagnosis.models import AuditEvent

    client.force_login(technician)
    smear, case = objects["smear"], objects["case"]
    assert client.post(reverse("diagnosis:smear_review", args=[smear.pk]), {"label": "Pre"}).status_code == 403
    response = client.post(reverse("diagnosis:case_finalize", args=[case.pk]), {"final_stage": "Pre", "action": "sign_out"})
    assert response.status_code == 403
    smear.refresh_from_db()
    case.refresh_from_db()
    assert smear.review_label == "" and case.signed_out_at is None
    assert not AuditEvent.objects.filter(action__in=["confirm", "override", "sign_out"]).exists()


def test_role_groups_have_the_review_permissions():
    from django.contrib.auth.models import Group

    def perms(role):
        return set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))

    tech, path, admin = perms("Technician"), perms("Pathologist"), perms("Admin")
    assert not {"review_case", "sign_out_case", "export_reviewed", "view_review_dashboard"} & tech
    assert {"review_case", "sign_out_case", "export_reviewed", "view_review_dashboard", "view_auditevent"} <= path
    assert {"view_auditevent", "view_rejectedupload"} <= tech
    assert tech | path <= admin


@pytest.mark.parametrize("model", ["auditevent", "caseaddendum", "rejectedupload"])
def test_admin_shows_records_read_only(client, make_user, objects, model):
    admin_user = make_user("Admin", is_staff=True, is_superuser=True)
    client.force_login(admin_user)
    assert client.get(reverse(f"admin:diagnosis_{model}_changelist")).status_code == 200
    assert client.get(reverse(f"admin:diagnosis_{model}_add")).status_code == 403
    from diagnosis.models import AuditEvent

    event = AuditEvent.objects.first()
    if model == "auditevent":
        change_url = reverse("admin:diagnosis_auditevent_change", args=[event.pk])
        page = client.get(change_url)
        assert page.status_code == 200 and b'name="_save"' not in page.content
        assert client.post(change_url, {"reason": "edited"}).status_code == 403
        assert client.post(reverse("admin:diagnosis_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
