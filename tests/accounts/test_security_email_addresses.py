"""An address that belongs to another account cannot be added to yours (security review F2). allauth stored it
unconfirmed; once the other account's owner pressed Confirm on the mail, their password reset reset the attacker's
account, and where the attacker's account had no primary address the confirmation failed with a server error. Such
an address now gets exactly the answer a free one gets ("confirmation sent"), so the page tells nobody which
addresses have accounts, but nothing is stored and no mail goes out."""
import pytest
from allauth.account.models import EmailAddress
from django.contrib.messages import get_messages
from django.core import mail
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


def signed_in_and_reauthenticated(client, user):
    client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    client.get(reverse("account_email"))  # shows (and so clears) the sign-in messages
    return client


def add_address(client, email):
    response = client.post(reverse("account_email"), {"action_add": "", "email": email})
    return response, [str(m) for m in get_messages(response.wsgi_request)]


@pytest.mark.parametrize("victim_kind", ["made in the admin", "signed up, not confirmed",
                                         "signed up and confirmed"])
def test_another_accounts_address_is_answered_as_sent_but_neither_stored_nor_mailed(client, make_user, no_role_user,
                                                                                       victim_kind):
    victim = make_user("Admin", email="victim@lab.example", is_staff=True)
    if victim_kind != "made in the admin":
        EmailAddress.objects.update_or_create(user=victim, email=victim.email, defaults={
            "primary": True, "verified": victim_kind == "signed up and confirmed"})
    attacker = signed_in_and_reauthenticated(client, no_role_user)
    mail.outbox.clear()
    taken, taken_messages = add_address(attacker, "Victim@Lab.Example")
    attacker.get(reverse("account_email"))
    free, free_messages = add_address(attacker, "fresh@lab.example")
    assert (taken.status_code, taken.url) == (free.status_code, free.url) == (302, reverse("account_email"))
    assert free_messages == ["Confirmation email sent to fresh@lab.example."]
    assert taken_messages == ["Confirmation email sent to victim@lab.example."]
    assert not EmailAddress.objects.filter(user=no_role_user, email__iexact="victim@lab.example").exists()
    assert EmailAddress.objects.filter(user=no_role_user, email="fresh@lab.example", verified=False).exists()
    assert [m.to for m in mail.outbox] == [["fresh@lab.example"]]  # the victim was not mailed


def test_a_password_reset_for_the_victims_address_still_reaches_the_victims_account(client, make_user, no_role_user):
    victim = make_user("Admin", email="victim@lab.example", is_staff=True)
    attacker = signed_in_and_reauthenticated(client, no_role_user)
    add_address(attacker, "victim@lab.example")
    attacker.logout()
    mail.outbox.clear()
    client.post(reverse("account_reset_password"), {"email": "victim@lab.example"})
    from allauth.account.utils import user_pk_to_url_str

    assert len(mail.outbox) == 1 and f"/key/{user_pk_to_url_str(victim)}-" in mail.outbox[0].body


def test_an_address_of_ones_own_can_still_be_added_and_confirmed(client, technician):
    signed_in_and_reauthenticated(client, technician)
    mail.outbox.clear()
    add_address(client, "second@lab.example")
    assert EmailAddress.objects.filter(user=technician, email="second@lab.example").exists()
    assert [m.to for m in mail.outbox] == [["second@lab.example"]]


def test_confirmation_mails_quote_no_words_a_user_typed(client, settings):
    """Sign-up and add-address mails went to any address with the sign-up's title and full name in their text
    (security review F4): a stranger could make the lab's mail server send their words."""
    words = "Win a prize at evil.example"
    client.post(reverse("account_signup"), {"email": "someone@elsewhere.example", "password1": PASSWORD,
                                            "password2": PASSWORD, "full_name": words, "title": "Claim now"})
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    assert words not in body and "Claim now" not in body
    assert "This email address was given for an account on" in body and "/accounts/confirm-email/" in body


def test_the_confirmation_page_names_no_account(client, no_role_user):
    """The page said "... is an email address for user <name>", the name whoever added the address typed."""
    no_role_user.full_name = "Lab Administrator"
    no_role_user.save()
    attacker = signed_in_and_reauthenticated(client, no_role_user)
    mail.outbox.clear()
    add_address(attacker, "someone@lab.example")
    import re

    link = re.search(r"https?://[^/]+(/accounts/confirm-email/\S+)", mail.outbox[-1].body).group(1)
    page = type(client)().get(link).content.decode()
    assert "someone@lab.example" in page and "is your email address" in page
    assert "Lab Administrator" not in page and no_role_user.email not in page
