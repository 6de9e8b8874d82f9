from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from diagnosis.views import home

admin.site.site_header = "LeukPortal administration"
admin.site.site_title = "LeukPortal admin"
# The admin signs in through allauth's login (its rate limits, MFA), never its own form.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("", include("diagnosis.urls")),
]
# Media files are deliberately not served here: see diagnosis.views.SmearFileView.
