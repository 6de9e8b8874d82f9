from allauth.account import views as allauth_views
from allauth.account.adapter import get_adapter
from allauth.account.models import EmailAddress
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import redirect
from django.views.generic import TemplateView

from .roles import has_role


class PendingRoleView(LoginRequiredMixin, TemplateView):
    """Where a signed-in user without a role waits for an administrator."""

    template_name = "accounts/pending_role.html"

    def get(self, request, *args, **kwargs):
        if has_role(request.user):
            return redirect("home")
        return super().get(request, *args, **kwargs)


class EmailView(allauth_views.EmailView):
    """allauth's e-mail page, except that an unconfirmed address never becomes
    the user's. The user's address (user.email, allauth's primary) is what
    audit trails, signed reports, exports and notifications show or use; a
    typed address proves nothing until its confirmation link is opened.
    allauth would let one take its place while the account has no confirmed
    address (an account an admin created, a sign-up never confirmed), with or
    without ACCOUNT_CHANGE_EMAIL: by "Make primary", or by removing the
    current address (allauth then puts another in user.email)."""

    def post(self, request, *args, **kwargs):
        refusal = self.refusal(request)
        if refusal:
            get_adapter(request).add_message(request, messages.ERROR, *refusal)
            return redirect("account_email")
        return super().post(request, *args, **kwargs)

    @staticmethod
    def refusal(request):
        """(allauth's message template, context) when the action would make an unconfirmed address the user's."""
        email = request.POST.get("email", "")
        address = EmailAddress.objects.filter(user=request.user, email__iexact=email).first()
        if address is None:
            return None  # allauth answers as usual
        if "action_primary" in request.POST and not address.verified:
            return "account/messages/unverified_primary_email.txt", None
        confirmed_others = EmailAddress.objects.filter(user=request.user, verified=True).exclude(pk=address.pk)
        if ("action_remove" in request.POST and address.email.lower() == request.user.email.lower()
                and not confirmed_others.exists()):
            return "account/messages/cannot_delete_primary_email.txt", {"email": address.email}
        return None
