from django.urls import path

from . import views

urlpatterns = [
    path("pending/", views.PendingRoleView.as_view(), name="pending_role"),
]
