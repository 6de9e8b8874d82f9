"""Portal-wide request handling: idle and absolute session timeouts, no-store
caching of authenticated pages, a readable answer to an upload with too
many files, and no multipart body read for those who may not upload or larger
than its request can be. Nothing here imports the apps' models."""
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import TooManyFilesSent
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
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
#: Room in an upload's body for what is not file content: each file part's headers (a name of 255 characters, its
#: content type) and boundaries, and the form's other fields (the kind, the CSRF token). Generous on purpose: no
#: legitimate upload may be refused by it (tests/test_security_upload_body.py measures a real one).
UPLOAD_OVERHEAD_PER_FILE = 64 * 1024
UPLOAD_OVERHEAD_BYTES = 1024 * 1024


def upload_body_limit() -> int:
    """The largest body the upload view reads: SMEAR_MAX_FILES_PER_UPLOAD files of SMEAR_MAX_UPLOAD_BYTES each,
    plus the overhead above (1254 MiB by default, under the README's nginx client_max_body_size 1300m)."""
    files = settings.SMEAR_MAX_FILES_PER_UPLOAD
    return files * (settings.SMEAR_MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD_PER_FILE) + UPLOAD_OVERHEAD_BYTES


def other_body_limit() -> int | None:
    """The largest multipart body any other request may send: no other page takes a file, and Django refuses more
    than DATA_UPLOAD_MAX_MEMORY_SIZE of other fields itself, so this plus the overhead. None when that limit is off."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return None if limit is None else limit + UPLOAD_OVERHEAD_BYTES


class TooManyFilesMiddleware:
    """Multipart bodies: none is read here but a smear upload by a user allowed to upload, and none larger than its
    request can legitimately be is read at all.

    * Django refuses a multipart POST with more than DATA_UPLOAD_MAX_NUMBER_FILES files with a bare 400 page before
      any view or form sees it. For the upload view, this reads the body first and sends the user back to the form
      with the same sentence the form uses. CsrfViewMiddleware reads the body in its process_view, which Django calls
      after every middleware's __call__, so this still comes first wherever it stands in MIDDLEWARE. It stands after
      AuthenticationMiddleware (and the session timeout and MFA middlewares): it reads the body only for a signed-in
      user with the permission the upload view declares, so an anonymous client, or one who may not upload, makes
      the portal parse and spool nothing here; CSRF and the view answer them as any other POST.
    * A multipart body whose Content-Length is larger than a legitimate request can be is refused before a byte of
      it is read, whoever sends it: an upload larger than upload_body_limit() goes back to the form with a message;
      any other multipart body larger than other_body_limit() gets 413. Otherwise CsrfViewMiddleware, reading the
      CSRF token from the body, would parse (and spool to disk) a body of any size from anyone holding the CSRF
      cookie, which the login page gives every visitor. Without a Content-Length Django reads no body at all."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.content_type == "multipart/form-data":
            response = self.check_multipart(request)
            if response is not None:
                return response
        return self.get_response(request)

    def check_multipart(self, request):
        length = content_length(request)
        permission = upload_permission(request)
        if permission is None or not may_upload(request.user, permission):
            limit = other_body_limit()
            if limit is not None and length > limit:
                return HttpResponse(
                    f"Request body too large: {length:,} bytes; this page takes at most {limit:,}.\n",
                    status=413, content_type="text/plain; charset=utf-8",
                )
            return None  # not read here: CSRF and the view decide
        if length > upload_body_limit():
            messages.error(
                request,
                f"This upload is {filesizeformat(length)}; one upload can be at most "
                f"{settings.SMEAR_MAX_FILES_PER_UPLOAD} files of {filesizeformat(settings.SMEAR_MAX_UPLOAD_BYTES)} "
                "each, so nothing was uploaded. Choose fewer or smaller files.",
            )
            return redirect(same_site_path(request))
        try:
            request.POST  # noqa: B018 -- parses the body, raising here rather than in CSRF
        except TooManyFilesSent:
            messages.error(
                request,
                f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files can be uploaded at once; "
                "nothing was uploaded. Choose fewer files and upload the rest separately.",
            )
            return redirect(same_site_path(request))
        return None


def content_length(request) -> int:
    """The declared length of the body, read as Django reads it (missing or not a number: no body)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def may_upload(user, permission) -> bool:
    """As the view's PermissionRequiredMixin asks; False for anonymous and inactive users."""
    return user.has_perms((permission,) if isinstance(permission, str) else permission)


def upload_permission(request) -> str | None:
    """The permission the smear upload view declares, when the request is for it; None for any other URL."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return None
    if match.view_name != UPLOAD_VIEW:
        return None
    # Should the view ever stop declaring one, nothing is read here (None), rather than reading for everyone.
    return getattr(getattr(match.func, "view_class", None), "permission_required", None)


def same_site_path(request) -> str:
    """The request's path when it is a path on this site; "/" otherwise. A path such as ``//evil.example/`` would
    be read by a browser as another host in a Location header. Only the upload view's paths get here now (see
    upload_permission), none of them such; kept should that check ever widen."""
    # A bare path has no host of its own; one that a browser would read as a host (//x, /\\x, ///x) is refused.
    return request.path if url_has_allowed_host_and_scheme(request.path, allowed_hosts=None) else "/"
