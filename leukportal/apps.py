from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    """django.contrib.admin with the portal's site (leukportal.admin.PortalAdminSite)."""

    default_site = "leukportal.admin.PortalAdminSite"
