"""The 500 page is rendered without a request context (Django's server_error uses no context processors, so that it
works when the database or a context processor is what failed): it cannot know who is signed in, so its navigation
is neutral (the way home, no role links, no account links, no "Sign in"). The 400, 403 and 404 pages, which have the
request context, keep the signed-in user's navigation."""
import pytest
from django.core.exceptions import SuspiciousOperation
from django.urls import reverse

pytestmark = pytest.mark.django_db

ACCOUNT_LINKS = ("Sign in", "Sign up", "Sign out", "data-account-menu", reverse("account_login"))


def broken_case_list(monkeypatch, exception=RuntimeError("boom")):
    from diagnosis import views

    def broken(self, **kwargs):
        raise exception

    monkeypatch.setattr(views.CaseListView, "get_context_data", broken)


def assert_neutral_nav(html):
    assert 'data-error-page="500"' in html
    for text in ACCOUNT_LINKS:
        assert text not in html, text
    assert "data-neutral-nav" in html and f'href="{reverse("home")}"' in html
    assert reverse("diagnosis:case_list") not in html  # no role links either


def test_the_500_page_shows_a_signed_in_user_no_sign_in_link(settings, path_client, monkeypatch):
    settings.DEBUG = False
    broken_case_list(monkeypatch)
    path_client.raise_request_exception = False
    response = path_client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 500
    assert_neutral_nav(response.content.decode())


def test_the_500_page_is_neutral_for_an_anonymous_visitor_too(settings, client, monkeypatch):
    settings.DEBUG = False

    def broken(self, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("allauth.account.views.LoginView.get_context_data", broken)
    client.raise_request_exception = False
    response = client.get(reverse("account_login"))
    assert response.status_code == 500
    assert_neutral_nav(response.content.decode())


def test_the_500_page_renders_when_the_navigation_query_fails(settings, path_client, monkeypatch):
    # The pages' context processor counts unread notifications in the database; when that fails, the 500 page
    # (no context processors) still renders.
    settings.DEBUG = False

    def database_down(user):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr("diagnosis.notifications.unread_count", database_down)
    path_client.raise_request_exception = False
    response = path_client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 500
    assert_neutral_nav(response.content.decode())


def assert_users_nav(html):
    assert "data-account-menu" in html and "Sign out" in html
    assert "Sign in" not in html and "data-neutral-nav" not in html
    assert f'href="{reverse("diagnosis:case_list")}"' in html  # the role's links


def test_the_404_page_keeps_the_signed_in_users_navigation(settings, path_client):
    settings.DEBUG = False
    response = path_client.get("/cases/999999/")
    assert response.status_code == 404
    assert_users_nav(response.content.decode())


def test_the_403_page_keeps_the_signed_in_users_navigation(settings, tech_client):
    settings.DEBUG = False
    response = tech_client.get(reverse("diagnosis:review_queue"))
    assert response.status_code == 403
    assert_users_nav(response.content.decode())


def test_the_400_page_keeps_the_signed_in_users_navigation(settings, path_client, monkeypatch):
    settings.DEBUG = False
    broken_case_list(monkeypatch, SuspiciousOperation("bad"))
    response = path_client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-error-page="400"' in html
    assert_users_nav(html)


def test_the_404_page_still_offers_sign_in_to_an_anonymous_visitor(settings, client):
    settings.DEBUG = False
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Sign in" in html and "data-account-menu" not in html
