from allauth.account.adapter import DefaultAccountAdapter
from django.contrib.auth.models import Group
from django.db import transaction

from . import roles


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user = super().save_user(request, user, form, commit=commit)
        if commit:
            promote_if_first_user(user)
        return user


@transaction.atomic
def promote_if_first_user(user):
    """The first account created on an empty database becomes superuser and
    Admin, so a fresh install needs no default password. Every later account
    starts without a role until an administrator assigns one."""
    User = type(user)
    if User.objects.exclude(pk=user.pk).exists():
        return False
    user.is_superuser = True
    user.is_staff = True
    user.save(update_fields=["is_superuser", "is_staff"])
    user.groups.add(Group.objects.get(name=roles.ADMIN))
    return True
