from django.contrib import admin
from django.urls import include, path

from diagnosis.views import home

admin.site.site_header = "LeukPortal administration"
admin.site.site_title = "LeukPortal admin"

urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("", include("diagnosis.urls")),
]
# Media files are deliberately not served here: see diagnosis.views.SmearFileView.
