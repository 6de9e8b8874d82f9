"""Login rate limits that an attacker could sidestep or turn against everyone:
per-IP limits behind the reverse proxy (every client has the proxy's address),
the failed-login count per account split by Host header spellings, and
password spraying over many accounts from one address."""
import pytest
from django.test import Client
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db

TOO_MANY = "Too many failed login attempts"
PROXY = "127.0.0.1"  # `make serve` binds gunicorn there: every request comes from nginx


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login(client, email, password, **extra):
    return client.post(reverse("account_login"), {"login": email, "password": password}, **extra)


def signed_in(client):
    return "_auth_user_id" in client.session


# --- Per-IP limits behind the proxy -----------------------------------------------
@pytest.fixture
def small_login_limit(settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login": "3/m/ip"}


def use_up_the_login_limit(client):
    for _ in range(3):
        login(client, "nobody@lab.example", "guess")
    assert login(client, "nobody@lab.example", "guess").status_code == 429


def test_behind_the_proxy_one_client_cannot_use_up_everyones_login_limit(settings, small_login_limit, make_user):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    colleague = make_user("Pathologist")
    use_up_the_login_limit(Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="203.0.113.9"))
    # A forged X-Forwarded-For does not help: nginx appends the address it saw, and that one counts.
    forged = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.77, 203.0.113.9")
    assert login(forged, "nobody@lab.example", "guess").status_code == 429
    same_proxy = Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="198.51.100.20")
    assert login(same_proxy, colleague.email, PASSWORD).status_code == 302 and signed_in(same_proxy)


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(small_login_limit, make_user):
    """Unset, a client could name any address in the header: the limit stays on REMOTE_ADDR."""
    colleague = make_user("Pathologist")
    use_up_the_login_limit(Client(REMOTE_ADDR="10.0.0.7", HTTP_X_FORWARDED_FOR="203.0.113.9"))
    other_header = Client(REMOTE_ADDR="10.0.0.7", HTTP_X_FORWARDED_FOR="198.51.100.20")
    assert login(other_header, colleague.email, PASSWORD).status_code == 429
    assert login(Client(REMOTE_ADDR="10.0.0.8"), colleague.email, PASSWORD).status_code == 302


def test_a_header_named_by_the_proxy_gives_the_client_address(settings, small_login_limit, make_user):
    settings.ALLAUTH_TRUSTED_CLIENT_IP_HEADER = "X-Real-IP"
    colleague = make_user("Pathologist")
    use_up_the_login_limit(Client(REMOTE_ADDR=PROXY, HTTP_X_REAL_IP="203.0.113.9"))
    same_proxy = Client(REMOTE_ADDR=PROXY, HTTP_X_REAL_IP="198.51.100.20")
    assert login(same_proxy, colleague.email, PASSWORD).status_code == 302


# --- Failed logins per account -----------------------------------------------------
# Every spelling of the test server's name that Django's ALLOWED_HOSTS check accepts.
HOST_VARIANTS = ["testserver", "TESTSERVER", "testserver:1", "testserver.", "TestServer:8000"]


def test_host_header_spellings_do_not_reset_the_failed_login_count(make_user):
    target = make_user("Admin", is_staff=True)
    for host in HOST_VARIANTS:
        response = login(Client(), target.email, "wrong-password", HTTP_HOST=host)
        assert response.status_code == 200 and TOO_MANY not in response.content.decode()
    # The sixth guess, with yet another spelling and the right password, is refused.
    client = Client()
    response = login(client, target.email, PASSWORD, HTTP_HOST="testserver:2")
    assert TOO_MANY in response.content.decode() and not signed_in(client)


def test_the_failed_login_count_ignores_letter_case_and_spaces_in_the_email(make_user):
    make_user("Admin", is_staff=True, email="admin@lab.example")
    for typed in ["admin@lab.example", "ADMIN@lab.example", " Admin@Lab.Example", "admin@LAB.EXAMPLE ",
                  "aDmIn@lab.example"]:
        login(Client(), typed, "wrong-password")
    client = Client()
    assert TOO_MANY in login(client, "Admin@lab.example", PASSWORD).content.decode() and not signed_in(client)


def test_the_failed_login_count_ignores_accents_the_database_ignores(make_user):
    """On MariaDB "admin@läb.example" signs in to "admin@lab.example" (its collation ignores accents): each accented
    spelling got five fresh guesses (third audit round)."""
    make_user("Admin", is_staff=True, email="admin@lab.example")
    for typed in ["admin@läb.example", "admin@lâb.example", "admin@lab.exámple", "admin@lab.example",
                  "admin@lab.ëxample"]:
        login(Client(), typed, "wrong-password")
    client = Client()
    assert TOO_MANY in login(client, "admin@lab.example", PASSWORD).content.decode() and not signed_in(client)


def test_password_spraying_over_many_accounts_from_one_address_is_stopped(make_user):
    """One wrong guess per account never reaches an account's limit: the address has one of its own."""
    accounts = [make_user("Technician") for _ in range(11)]
    sprayer = Client(REMOTE_ADDR="203.0.113.9")
    for account in accounts[:10]:
        assert TOO_MANY not in login(sprayer, account.email, "Summer2025!").content.decode()
    assert TOO_MANY in login(sprayer, accounts[10].email, PASSWORD).content.decode()
    assert not signed_in(sprayer)
    elsewhere = Client(REMOTE_ADDR="198.51.100.20")
    assert login(elsewhere, accounts[10].email, PASSWORD).status_code == 302


def test_guessing_one_account_does_not_use_up_the_addresss_failed_login_limit(make_user):
    """After an account's five, further guesses at it are refused before they count against the address,
    so colleagues behind the same NAT address can still sign in."""
    target, colleague = make_user("Admin", is_staff=True), make_user("Pathologist")
    attacker = Client(REMOTE_ADDR="10.0.0.7")
    for _ in range(30):
        login(attacker, target.email, "wrong-password")
    for _ in range(4):  # four typos of a colleague behind the same address: 5 + 4 < 10
        login(Client(REMOTE_ADDR="10.0.0.7"), colleague.email, "typo")
    same_office = Client(REMOTE_ADDR="10.0.0.7")
    assert login(same_office, colleague.email, PASSWORD).status_code == 302 and signed_in(same_office)
