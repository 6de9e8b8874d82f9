"""Issue 15.8: 403, 404 and 500 pages in the portal's layout with a way back,
as served with DEBUG off (the test client runs with DEBUG off)."""
import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def assert_portal_page(html, code):
    assert 'class="navbar' in html  # the portal's layout
    assert f'data-error-page="{code}"' in html
    assert f'href="{reverse("home")}" data-way-back' in html


def test_404_page_is_in_the_portal_layout_with_a_way_back(settings, path_client):
    settings.DEBUG = False
    response = path_client.get("/cases/999999/")
    assert response.status_code == 404
    assert_portal_page(response.content.decode(), 404)


def test_403_page_is_in_the_portal_layout_with_a_way_back(settings, tech_client):
    settings.DEBUG = False
    response = tech_client.get(reverse("diagnosis:review_queue"))
    assert response.status_code == 403
    html = response.content.decode()
    assert_portal_page(html, 403)
    assert "ask an administrator" in html


def test_a_csrf_failure_gets_the_portal_403_page(settings, technician):
    from django.test import Client

    settings.DEBUG = False
    client = Client(enforce_csrf_checks=True)
    client.force_login(technician)
    response = client.post(reverse("diagnosis:case_create"), {"accession_number": "ACC-X"})
    assert response.status_code == 403
    html = response.content.decode()
    assert_portal_page(html, 403)
    assert "This form has expired" in html and "Nothing was saved" in html


def test_500_page_renders_without_a_request_context():
    # Django renders 500.html with an empty context: the layout must not need one.
    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert_portal_page(response.content.decode(), 500)


def test_an_exception_in_a_view_gives_the_portal_500_page(settings, path_client, monkeypatch):
    settings.DEBUG = False
    from diagnosis import views

    def broken(self, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views.CaseListView, "get_context_data", broken)
    path_client.raise_request_exception = False
    response = path_client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 500
    assert_portal_page(response.content.decode(), 500)
