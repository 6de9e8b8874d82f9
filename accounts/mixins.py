from django.contrib.auth.mixins import PermissionRequiredMixin
from django.shortcuts import redirect

from .roles import has_role


class RolePermissionRequiredMixin(PermissionRequiredMixin):
    """PermissionRequiredMixin for portal pages.

    * anonymous users are sent to the login page;
    * signed-in users without any role go to the "waiting for a role" page;
    * users whose role lacks the permission get 403 Forbidden.
    """

    raise_exception = True

    def handle_no_permission(self):
        user = self.request.user
        if not user.is_authenticated:
            self.raise_exception = False
            return super().handle_no_permission()
        if not has_role(user):
            return redirect("pending_role")
        return super().handle_no_permission()
