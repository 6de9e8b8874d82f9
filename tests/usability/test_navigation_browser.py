"""In headless Chromium: the navigation bar keeps one row at a desktop width, and the account's own pages
(password, two-factor, sign out) sit in a menu under the person's name."""
import pytest

from tests.portal_testutils import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_the_navigation_bar_is_one_row_for_a_pathologist_with_a_long_address(browser, live_server, make_user):
    pathologist = make_user("Pathologist", email="a-rather-long-pathologist-address@laboratory.example")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    browser_login(page, live_server.url, pathologist)
    tops = page.eval_on_selector_all("nav .navbar-nav > .nav-item > .nav-link",
                                     "links => links.map(link => link.getBoundingClientRect().top)")
    heights = page.eval_on_selector_all("nav .navbar-nav > .nav-item > .nav-link",
                                        "links => links.map(link => link.getBoundingClientRect().height)")
    assert len(tops) >= 6
    assert max(tops) - min(tops) <= 4, tops  # one row: no item pushed up, down or onto a second line
    assert max(heights) - min(heights) <= 4, heights  # and none wrapped onto two lines within its item


def test_the_account_menu_holds_password_two_factor_and_sign_out(browser, live_server, pathologist):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    browser_login(page, live_server.url, pathologist)
    menu = page.locator(".dropdown-menu")
    assert not menu.is_visible()
    page.click("[data-account-menu]")
    assert menu.is_visible()
    assert [item.strip() for item in menu.locator(".dropdown-item").all_inner_texts()] == [
        "Password", "Two-factor", "Sign out"]
    assert pathologist.email in menu.inner_text()
    page.click(".dropdown-menu >> text=Sign out")
    page.wait_for_url(live_server.url + "/accounts/logout/")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/**")
    assert page.locator("[data-account-menu]").count() == 0
