"""Issue 15.10: one time format, with the time zone of settings.TIME_ZONE, everywhere."""
import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnosis import services
from diagnosis.formatting import format_when

pytestmark = pytest.mark.django_db


def test_format_when_writes_local_time_with_the_zone(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    moment = datetime.datetime(2026, 1, 15, 8, 30, tzinfo=datetime.UTC)
    assert format_when(moment) == "2026-01-15 09:30 CET"
    assert format_when(None) == "–"


def test_pages_show_times_in_the_configured_zone(settings, path_client, reviewed_case, pathologist):
    settings.TIME_ZONE = "Europe/Berlin"
    services.sign_out(reviewed_case, pathologist, "Pre")
    reviewed_case.refresh_from_db()
    expected = format_when(reviewed_case.signed_out_at)
    assert expected.endswith(("CET", "CEST"))
    for url in (reverse("diagnosis:case_detail", args=[reviewed_case.pk]),
                reverse("diagnosis:case_report", args=[reviewed_case.pk])):
        assert expected in path_client.get(url).content.decode()
    listing = path_client.get(reverse("diagnosis:case_list")).content.decode()
    assert format_when(reviewed_case.created_at) in listing


def test_refusal_after_sign_out_names_the_time_with_its_zone(reviewed_case, pathologist, field):
    services.sign_out(reviewed_case, pathologist, "Pre")
    with pytest.raises(services.CaseLocked, match=r"signed out on \d{4}-\d\d-\d\d \d\d:\d\d UTC"):
        services.set_final_stage(reviewed_case, pathologist, "Pro")
    assert timezone.get_current_timezone_name() == "UTC"


def test_admin_lists_write_times_in_the_same_format(settings, client, make_user, case):
    settings.TIME_ZONE = "Europe/Berlin"
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    html = client.get(reverse("admin:diagnosis_case_changelist")).content.decode()
    assert format_when(case.created_at) in html
