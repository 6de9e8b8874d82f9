"""The portal's admin site: Django's, with everything about people in one
"Accounts" section (users, role groups, e-mail addresses, MFA) instead of
one heading per app that happens to store them; and the search bound every
portal ModelAdmin shares (BoundedSearchMixin)."""
from django.contrib import admin, messages

#: Apps whose models the index lists under "Accounts", in this order.
ACCOUNT_APPS = ("accounts", "auth", "account", "mfa")


class PortalAdminSite(admin.AdminSite):
    site_header = "LeukPortal administration"
    site_title = "LeukPortal admin"

    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        if app_label is not None:
            return app_list
        account_sections = sorted(
            (app for app in app_list if app["app_label"] in ACCOUNT_APPS),
            key=lambda app: ACCOUNT_APPS.index(app["app_label"]),
        )
        if len(account_sections) < 2:
            return app_list
        merged = dict(account_sections[0], name="Accounts",
                      models=[model for app in account_sections for model in app["models"]])
        others = [app for app in app_list if app["app_label"] not in ACCOUNT_APPS]
        return sorted([merged, *others], key=lambda app: app["name"].lower())


class BoundedSearchMixin:
    """A ModelAdmin whose search (the list's search box and autocomplete) refuses a term longer than
    MAX_SEARCH_LENGTH with a message and no results. Identifiers, names and e-mail addresses are far
    shorter; a pasted page of text made SQLite refuse the LIKE pattern ("pattern too complex"), a server error."""

    MAX_SEARCH_LENGTH = 200

    def get_search_results(self, request, queryset, search_term):
        if len(search_term) > self.MAX_SEARCH_LENGTH:
            self.message_user(request, f"The search was {len(search_term):,} characters long; search for at most "
                                       f"{self.MAX_SEARCH_LENGTH} characters.", messages.ERROR)
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)
