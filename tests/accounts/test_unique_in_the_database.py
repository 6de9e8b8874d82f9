"""The database itself refuses a second confirmed record of one address, a second primary address of one account
and a second authenticator app of one account, on every backend: SQLite and PostgreSQL through allauth's partial
unique constraints, MariaDB/MySQL (which has no partial indexes, system check W036) through unique indexes on
generated columns (migration accounts.0011). Two concurrent requests can both pass allauth's checks in Python."""
import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.apps import apps
from django.db import IntegrityError, transaction
from django.db.models import UniqueConstraint

pytestmark = pytest.mark.django_db


def refused(**fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        EmailAddress.objects.create(**fields)


def test_an_address_is_confirmed_for_one_account_only(make_user):
    first, second = make_user("Technician"), make_user("Technician")
    EmailAddress.objects.create(user=first, email="shared@lab.example", verified=True, primary=False)
    refused(user=second, email="shared@lab.example", verified=True, primary=False)
    # Unconfirmed records of it may be many (each account that typed it waits for its confirmation).
    EmailAddress.objects.create(user=second, email="shared@lab.example", verified=False, primary=False)
    assert EmailAddress.objects.filter(email="shared@lab.example").count() == 2


def test_an_account_has_one_primary_address(make_user):
    user = make_user("Technician")
    assert EmailAddress.objects.filter(user=user, primary=True).count() == 1  # vouched at creation
    refused(user=user, email="second@lab.example", verified=True, primary=True)
    EmailAddress.objects.create(user=user, email="third@lab.example", verified=True, primary=False)


def test_an_account_has_one_authenticator_app_and_one_set_of_recovery_codes(make_user):
    user = make_user("Pathologist")
    Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={})
    with pytest.raises(IntegrityError), transaction.atomic():
        Authenticator.objects.create(user=user, type=Authenticator.Type.TOTP, data={})
    Authenticator.objects.create(user=user, type=Authenticator.Type.RECOVERY_CODES, data={})
    # Security keys may be several.
    Authenticator.objects.create(user=user, type=Authenticator.Type.WEBAUTHN, data={})
    Authenticator.objects.create(user=user, type=Authenticator.Type.WEBAUTHN, data={})


def test_the_migration_covers_every_conditional_unique_constraint():
    """accounts.0011 emulates these on MariaDB and the settings silence W036 there: a new conditional constraint
    (ours or a library's) must be added to it."""
    from importlib import import_module

    migration = import_module("accounts.migrations.0011_mariadb_conditional_unique_constraints")
    conditional = sorted(
        (model._meta.db_table, constraint.name)
        for model in apps.get_models() for constraint in model._meta.constraints
        if isinstance(constraint, UniqueConstraint) and constraint.condition is not None
    )
    covered = sorted((table, index.removeprefix("leuk_")) for table, _, _, index, _ in migration.GENERATED)
    assert conditional == covered
