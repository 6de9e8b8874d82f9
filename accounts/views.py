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
