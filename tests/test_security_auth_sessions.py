"""The longest session (SESSION_COOKIE_AGE, 12 hours) holds however active the
session is: the idle timeout's bookkeeping re-saves the session, and with it
the cookie's age, on every request, so the cookie alone never ends it."""
import time

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

HOUR = 3600


@pytest.fixture
def clock(monkeypatch):
    """time.time() under the test's control: clock.now is seconds since the test started."""

    class Clock:
        start = time.time()
        now = 0

    monkeypatch.setattr(time, "time", lambda: Clock.start + Clock.now)
    return Clock


@pytest.fixture(autouse=True)
def session_limits(settings):
    settings.SESSION_IDLE_TIMEOUT_SECONDS = 30 * 60
    settings.SESSION_COOKIE_AGE = 12 * HOUR


def use_every_25_minutes(client, clock, until):
    """Open the case list every 25 minutes (never idle for 30) up to `until` seconds; the last answer."""
    while clock.now + 25 * 60 <= until:
        clock.now += 25 * 60
        response = client.get(reverse("diagnosis:case_list"))
        if response.status_code != 200:
            return response
    return response


def test_an_active_session_ends_twelve_hours_after_sign_in(client, pathologist, clock):
    client.force_login(pathologist)
    assert client.get(reverse("diagnosis:case_list")).status_code == 200
    response = use_every_25_minutes(client, clock, until=13 * HOUR)
    # Every page view up to 12 hours was answered (never idle for 30 minutes); the first one after is not.
    assert clock.now == 12 * HOUR + 5 * 60
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))
    assert "_auth_user_id" not in client.session
    page = client.get(response.url)
    assert "signed out 12 hours after signing in" in page.content.decode()


def test_status_polling_is_answered_as_signed_out_after_twelve_hours(client, pathologist, case, clock):
    client.force_login(pathologist)
    use_every_25_minutes(client, clock, until=12 * HOUR)
    clock.now = 12 * HOUR + 60
    response = client.get(reverse("diagnosis:case_status", args=[case.pk]))
    assert response.status_code == 401


def test_signing_in_again_starts_a_new_twelve_hours(client, pathologist, clock):
    client.force_login(pathologist)
    use_every_25_minutes(client, clock, until=11 * HOUR)
    # The same person signs in again in the same session: Django keeps the session's data then.
    client.force_login(pathologist)
    assert use_every_25_minutes(client, clock, until=20 * HOUR).status_code == 200


def test_a_session_without_a_sign_in_time_gets_twelve_hours_from_its_next_request(client, pathologist, clock):
    """Sessions signed in before the portal kept the time: their clock starts at their next request."""
    from leukportal.middleware import SIGNED_IN_AT_KEY

    client.force_login(pathologist)
    session = client.session
    del session[SIGNED_IN_AT_KEY]
    session.save()
    response = use_every_25_minutes(client, clock, until=13 * HOUR)  # first request 25 minutes in
    assert clock.now == 25 * 60 + 12 * HOUR + 5 * 60 and response.status_code == 302
