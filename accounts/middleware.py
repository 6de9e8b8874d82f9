"""MFA required by role: users of the roles in settings.MFA_REQUIRED_ROLES
(and superusers, whenever any role is listed) are sent to set up TOTP before
they can open anything but allauth's own pages."""
from django.conf import settings
from django.shortcuts import redirect
from django.urls import reverse

#: Open without MFA: allauth's pages (login, logout, MFA setup, password) and static files.
EXEMPT_PREFIXES = ("/accounts/", "/static/")


def mfa_required(user) -> bool:
    roles = settings.MFA_REQUIRED_ROLES
    if not roles or not user.is_authenticated:
        return False
    return user.is_superuser or user.groups.filter(name__in=roles).exists()


def has_mfa(user) -> bool:
    from allauth.mfa.models import Authenticator
    from allauth.mfa.utils import is_mfa_enabled

    return is_mfa_enabled(user, [Authenticator.Type.TOTP])


class RequireMFAMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (user is not None and user.is_authenticated and not request.path.startswith(EXEMPT_PREFIXES)
                and mfa_required(user) and not has_mfa(user)):
            from django.contrib import messages

            messages.warning(request, "Your role requires two-factor authentication: set up an authenticator app first.")
            return redirect(reverse("mfa_activate_totp"))
        return self.get_response(request)
