"""An administrator opens an account without choosing its password: the account is created without one and its
owner chooses it from an e-mailed link. Otherwise the administrator would know a pathologist's password and, since
two-factor sign-in is set up at the first sign-in, could set up their own authenticator on that account."""
import re

import pytest
from django.core import mail
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(client, make_user):
    client.force_login(make_user("Admin", is_staff=True))
    return client


def set_password_link(message):
    return re.search(r"https?://[^/]+(/accounts/password/reset/key/\S+)", message.body).group(1)


def test_a_new_account_has_no_password_and_its_owner_chooses_one_from_the_mail(admin_client_, client,
                                                                             django_user_model):
    form = admin_client_.get(reverse("admin:accounts_user_add")).content.decode()
    assert 'name="password1"' not in form and "link to choose one" in form
    mail.outbox.clear()
    response = admin_client_.post(reverse("admin:accounts_user_add"),
                                  {"email": "New.Pathologist@lab.example", "full_name": "Ana Novak", "title": "Dr"})
    assert response.status_code == 302
    user = django_user_model.objects.get(full_name="Ana Novak")
    assert not user.has_usable_password()
    assert [m.to for m in mail.outbox] == [[user.email]]
    body = mail.outbox[0].body
    assert "choose your password" in body and "Ana Novak" not in body  # nothing typed by anyone is quoted

    owner = type(client)()
    page = owner.get(set_password_link(mail.outbox[0]), follow=True)
    assert page.status_code == 200
    new_password = "A-long-passphrase-for-Ana-1"
    response = owner.post(page.redirect_chain[-1][0] if page.redirect_chain else set_password_link(mail.outbox[0]),
                          {"password1": new_password, "password2": new_password})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new_password)
    reused = owner.get(set_password_link(mail.outbox[0]), follow=True).content.decode()
    assert 'name="password1"' not in reused  # the link works once
    assert owner.post(reverse("account_login"), {"login": user.email, "password": new_password}).status_code == 302


def test_a_lost_invitation_can_be_sent_again_only_to_accounts_still_without_a_password(admin_client_, make_user):
    waiting = make_user("Technician", email="waiting@lab.example")
    waiting.set_unusable_password()
    waiting.save()
    active = make_user("Technician", email="active@lab.example")
    mail.outbox.clear()
    response = admin_client_.post(reverse("admin:accounts_user_changelist"), {
        "action": "invite_again", "_selected_action": [waiting.pk, active.pk]}, follow=True)
    assert "Sent 1 link(s). 1 account(s) skipped" in response.content.decode()
    assert [m.to for m in mail.outbox] == [["waiting@lab.example"]]
    active.refresh_from_db()
    assert active.check_password(PASSWORD)
