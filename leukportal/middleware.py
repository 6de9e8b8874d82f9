"""Portal-wide request handling: idle and absolute session timeouts, no-store
caching of authenticated pages, and a readable answer to an upload with too
many files. Nothing here imports the apps' models."""
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import TooManyFilesSent
from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.cache import patch_cache_control

#: Requests a page makes by itself while it is open (status polling): they do
#: not count as activity, or an open case page would never time out.
PASSIVE_SUFFIXES = ("status.json",)
LAST_ACTIVITY_KEY = "leukportal_last_activity"
SIGNED_IN_AT_KEY = "leukportal_signed_in_at"


def start_session_clock(sender, request, user, **kwargs):
    """user_logged_in receiver (accounts.apps): the session's absolute limit
    counts from here. Signing in again restarts it, even in the same session."""
    if request is not None:
        request.session[SIGNED_IN_AT_KEY] = int(time.time())


class IdleSessionTimeoutMiddleware:
    """Sign out a session that has not been used for SESSION_IDLE_TIMEOUT_SECONDS
    (0 turns it off), and any session SESSION_COOKIE_AGE after its sign-in,
    however active. The cookie's own age cannot end it: the activity stamp
    below saves the session, and so renews the cookie, on every request.
    Needs AuthenticationMiddleware before it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.user.is_authenticated:
            return self.get_response(request)
        now = int(time.time())
        passive = request.path.endswith(PASSIVE_SUFFIXES)
        # A session signed in before the sign-in time was kept gets its clock from now.
        signed_in_at = request.session.setdefault(SIGNED_IN_AT_KEY, now)
        max_age = settings.SESSION_COOKIE_AGE
        if now - signed_in_at > max_age:
            return sign_out(request, passive, f"You were signed out {duration(max_age)} after signing in. "
                                              "Sign in again to continue.")
        timeout = settings.SESSION_IDLE_TIMEOUT_SECONDS
        if timeout:
            last = request.session.get(LAST_ACTIVITY_KEY)
            if last is not None and now - last > timeout:
                return sign_out(request, passive,
                                f"You were signed out after {timeout // 60} minutes without activity.")
            if not passive or last is None:
                request.session[LAST_ACTIVITY_KEY] = now
        return self.get_response(request)


def sign_out(request, passive, message):
    logout(request)
    if passive or request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"error": message}, status=401)
    messages.info(request, message)
    return redirect_to_login(request.get_full_path())


def duration(seconds):
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{seconds // 60} minutes"


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


#: The one view whose multipart POSTs this middleware reads.
UPLOAD_VIEW = "diagnosis:smear_upload"


class TooManyFilesMiddleware:
    """Django refuses a multipart POST with more than DATA_UPLOAD_MAX_NUMBER_FILES
    files with a bare 400 page before any view or form sees it. Send the user
    back to the page with the same sentence the upload form uses. Must come
    before CsrfViewMiddleware (which reads the POST first). It reads the body
    before CSRF and sign-in are checked, so only for the smear upload view:
    elsewhere an anonymous client could make every URL parse and spool a body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (request.method == "POST" and request.content_type == "multipart/form-data"
                and is_upload_view(request)):
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


def is_upload_view(request) -> bool:
    try:
        return resolve(request.path_info).view_name == UPLOAD_VIEW
    except Resolver404:
        return False


def same_site_path(request) -> str:
    """The request's path when it is a path on this site; "/" otherwise. A path such as ``//evil.example/`` would
    be read by a browser as another host in a Location header. Only the upload view's paths get here now (see
    is_upload_view), none of them such; kept should that check ever widen."""
    # A bare path has no host of its own; one that a browser would read as a host (//x, /\\x, ///x) is refused.
    return request.path if url_has_allowed_host_and_scheme(request.path, allowed_hosts=None) else "/"
