"""Portal-wide request handling: idle session timeout, no-store caching of
authenticated pages, and a readable answer to an upload with too many files.
Nothing here imports the apps' models."""
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import TooManyFilesSent
from django.http import JsonResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.cache import patch_cache_control

#: Requests a page makes by itself while it is open (status polling): they do
#: not count as activity, or an open case page would never time out.
PASSIVE_SUFFIXES = ("status.json",)
LAST_ACTIVITY_KEY = "leukportal_last_activity"


class IdleSessionTimeoutMiddleware:
    """Sign out a session that has not been used for SESSION_IDLE_TIMEOUT_SECONDS
    (0 turns it off). Needs AuthenticationMiddleware before it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        timeout = settings.SESSION_IDLE_TIMEOUT_SECONDS
        if timeout and request.user.is_authenticated:
            now = int(time.time())
            last = request.session.get(LAST_ACTIVITY_KEY)
            passive = request.path.endswith(PASSIVE_SUFFIXES)
            if last is not None and now - last > timeout:
                logout(request)
                if passive or request.headers.get("Accept", "").startswith("application/json"):
                    return JsonResponse({"error": "signed out after inactivity"}, status=401)
                messages.info(request, f"You were signed out after {timeout // 60} minutes without activity.")
                return redirect_to_login(request.get_full_path())
            if not passive or last is None:
                request.session[LAST_ACTIVITY_KEY] = now
        return self.get_response(request)


class NoStoreMiddleware:
    """Every response to a signed-in user carries patient data or may: no
    browser or proxy keeps a copy (Cache-Control: no-store, private)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            response.headers.pop("Cache-Control", None)
            patch_cache_control(response, no_store=True, private=True)
        return response


class TooManyFilesMiddleware:
    """Django refuses a multipart POST with more than DATA_UPLOAD_MAX_NUMBER_FILES
    files with a bare 400 page before any view or form sees it. Send the user
    back to the page with the same sentence the upload form uses. Must come
    before CsrfViewMiddleware (which reads the POST first)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.content_type == "multipart/form-data":
            try:
                request.POST  # noqa: B018 -- parses the body, raising here rather than in CSRF
            except TooManyFilesSent:
                messages.error(
                    request,
                    f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files can be uploaded at once; "
                    "nothing was uploaded. Choose fewer files and upload the rest separately.",
                )
                return redirect(same_site_path(request))
        return self.get_response(request)


def same_site_path(request) -> str:
    """The request's path when it is a path on this site; "/" otherwise. A path such as ``//evil.example/`` reaches
    the middleware before URL resolution, and as a Location header a browser would read it as another host."""
    # A bare path has no host of its own; one that a browser would read as a host (//x, /\\x, ///x) is refused.
    return request.path if url_has_allowed_host_and_scheme(request.path, allowed_hosts=None) else "/"
