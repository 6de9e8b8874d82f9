from django.urls import path

from . import views

urlpatterns = [
    path("pending/", views.PendingRoleView.as_view(), name="pending_role"),
    # Before allauth's own (leukportal/urls.py): only a confirmed address can become primary.
    path("email/", views.EmailView.as_view(), name="account_email"),
]
