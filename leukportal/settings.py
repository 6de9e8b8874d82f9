"""LeukPortal settings.

Every deployment-specific value comes from the environment (or a `.env` file in
the repository root) through django-environ. DEBUG is off unless DEBUG=1 is
set, and with DEBUG off SECRET_KEY and ALLOWED_HOSTS are required: a forgotten
setting stops the portal instead of exposing a debug server. With DEBUG=1
(`make run`, the tests) and nothing else the portal runs in development mode:
SQLite in db.sqlite3, the Celery broker on the local filesystem under var/,
emails printed to the console. See the configuration table in README.md.
"""
import logging
import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")


# --- Private files ------------------------------------------------------------
# The secret key, the SQLite database (patients, password hashes, TOTP secrets) and the runtime folder are for
# the portal's user only (group too for the folder), never for every local account as the usual umask 022 makes
# them. Only what the portal creates is made so: the modes of existing files and folders are left as they are.
def make_private_dir(path):
    """Create the folder (and its parents) with mode 0750 at most; an existing folder keeps its mode."""
    Path(path).mkdir(mode=0o750, parents=True, exist_ok=True)


def create_private_file(path, data=b""):
    """Create `path` holding `data` with mode 0600, never readable by others even for a moment, whatever the umask.
    False (nothing written) when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # the mode above is only narrowed by the umask; this states it outright
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return True


def secure_sqlite_database(db):
    """For a SQLite database (DATABASES entry `db`) whose file does not exist yet, create it empty with mode 0600
    before Django opens it: SQLite takes an empty file as an empty database, and gives its journal and WAL files the
    database's mode. An existing file keeps its mode; returns a warning for the admin when every local account can
    read it, else None. Not tightened here: settings run for every command and process, and a mode an
    administrator chose (a backup agent running as another account) is not this file's to change unasked."""
    if "sqlite" not in db.get("ENGINE", ""):
        return None
    name = str(db.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):  # in memory, or a URI Django passes to SQLite
        return None
    path = Path(name)
    if not path.parent.is_dir():  # Django's own error when it opens it
        return None
    if create_private_file(path):
        return None
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if mode & 0o007:
        return (f"The SQLite database {path} can be read by every local account (mode {mode:o}); it holds patient "
                f"data, password hashes and TOTP secrets. Make it private: chmod 600 {path}")
    return None


VAR_DIR = Path(env.str("LEUKPORTAL_VAR_DIR", default=str(BASE_DIR / "var")))
make_private_dir(VAR_DIR)

DEBUG = env.bool("DEBUG", default=False)


def _secret_key():
    key = env.str("SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (DEBUG=1 for development).")
    # Development only: a random key generated once per checkout and kept in
    # var/ so that sessions survive restarts and the worker agrees with the web.
    path = VAR_DIR / "dev-secret-key"
    create_private_file(path, get_random_secret_key().encode())  # kept when it exists
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# Earlier keys, while sessions, links and the encrypted two-factor secrets (accounts.mfa_adapter) move to the new one.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")

INSTALLED_APPS = [
    "leukportal.apps.PortalAdminConfig",  # django.contrib.admin with one "Accounts" section
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "csp",
    "crispy_forms",
    "crispy_bootstrap5",
    "accounts",
    "diagnosis",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "leukportal.middleware.IdleSessionTimeoutMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.RequireMFAMiddleware",
    "leukportal.middleware.NoStoreMiddleware",
    # After sign-in (and the session and MFA checks): reads an upload's body only for a user allowed to upload,
    # and refuses a body larger than its request can be, unread. Still before CSRF reads the body: CSRF checks in
    # process_view, which runs after every middleware's __call__ (tests/test_security_upload_body.py).
    "leukportal.middleware.TooManyFilesMiddleware",
]

ROOT_URLCONF = "leukportal.urls"
WSGI_APPLICATION = "leukportal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "diagnosis.context_processors.portal",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
_db = DATABASES["default"]
if "sqlite" in _db["ENGINE"]:
    # Created 0600 when new; a warning (once per process) when an existing one is readable by everybody.
    _sqlite_warning = secure_sqlite_database(_db)
    if _sqlite_warning:
        logging.getLogger("leukportal.settings").warning(_sqlite_warning)
    # Web, worker and tests share the file; wait for locks instead of failing. IMMEDIATE: a transaction takes the
    # write lock when it begins, so two that read a case and then write it wait for each other (timeout) instead
    # of one failing at once with "database is locked" when it upgrades its read lock (a 500 seen under concurrent
    # sign-outs, addenda and uploads; select_for_update does nothing on SQLite).
    _db.setdefault("OPTIONS", {}).setdefault("timeout", 20)
    _db["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
    # A file (not :memory:) so that a Celery worker subprocess in the
    # end-to-end test can open the very database pytest-django created.
    _db["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
elif "mysql" in _db["ENGINE"]:
    _db.setdefault("OPTIONS", {}).update(
        {"charset": "utf8mb4", "init_command": "SET sql_mode='STRICT_TRANS_TABLES'"}
    )
    _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    # W036 "MariaDB does not support unique constraints with conditions": allauth's three are enforced there by
    # unique indexes on generated columns (migration accounts.0011); tests/accounts/test_unique_in_the_database.py
    # fails when a model gains a conditional constraint that migration does not cover.
    SILENCED_SYSTEM_CHECKS = ["models.W036"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts (django-allauth) ---------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
# Full name and optional professional title (shown on cases, reports, audit trail).
ACCOUNT_SIGNUP_FORM_CLASS = "accounts.forms.SignupForm"
# An address of another account is not added (accounts.email_forms).
ACCOUNT_FORMS = {"add_email": "accounts.email_forms.PortalAddEmailForm"}
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="optional")
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = True
# Failed logins are limited per account (the email typed, whatever the Host
# header: accounts.adapter) and per IP, against spraying one password over
# many accounts. The account's limit comes first: once it refuses, further
# guesses at that account stop counting against the IP, so a lab behind one
# NAT address is not locked out by one person's typos or by an attacker
# hammering one account. All login attempts from one IP are capped generously.
ACCOUNT_RATE_LIMITS = {
    "login_failed": env.str("LOGIN_FAILED_RATE_LIMIT", default="5/5m/key,10/m/ip"),
    "login": env.str("LOGIN_RATE_LIMIT", default="100/m/ip"),
}
# Behind the reverse proxy (README, Production server) every request comes
# from the proxy's address, so the per-IP limits above would be one bucket
# for everybody. Name the proxies that append the client to X-Forwarded-For
# (nginx in front of `make serve`: 1), or a header the proxy sets to the client
# address (X-Real-IP). Only when nothing reaches gunicorn but through them:
# a client talking to it directly could write these headers itself.
ALLAUTH_TRUSTED_PROXY_COUNT = env.int("ALLAUTH_TRUSTED_PROXY_COUNT", default=0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = env.str("ALLAUTH_TRUSTED_CLIENT_IP_HEADER", default="") or None
# Sensitive account changes (email, password, MFA) ask for the password again.
ACCOUNT_REAUTHENTICATION_REQUIRED = True
# The one address whose sign-up makes the first superuser and Admin
# (accounts.adapter.promote_bootstrap_admin); nobody else is promoted by
# signing up, so a stranger reaching a fresh install first does not own it.
PORTAL_BOOTSTRAP_ADMIN_EMAIL = env.str("PORTAL_BOOTSTRAP_ADMIN_EMAIL", default="")

# --- Multi-factor authentication (allauth.mfa) --------------------------------
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
# The TOTP keys and recovery seeds are stored encrypted, keyed from SECRET_KEY (accounts.mfa_adapter).
MFA_ADAPTER = "accounts.mfa_adapter.PortalMFAAdapter"
MFA_TOTP_ISSUER = env.str("MFA_TOTP_ISSUER", default="LeukPortal")
# Roles that must set up TOTP before they see anything else
# (accounts.middleware.RequireMFAMiddleware). Superusers always must when any
# role is listed. Empty to make MFA optional for everyone.
MFA_REQUIRED_ROLES = env.list("MFA_REQUIRED_ROLES", default=["Pathologist", "Admin"])
ACCOUNT_SESSION_REMEMBER = None
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LeukPortal <leukportal@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Cache (login rate limits) -----------------------------------------------
# Rate limits must hold across web processes and machines: a shared cache.
# Defaults to the Redis broker's server when the broker is Redis; otherwise
# (development, one process) memory. In production prefer a Redis database of
# its own (CACHE_URL=rediscache://host:6379/1): a cache clear() flushes its database.
_broker_url = env.str("CELERY_BROKER_URL", default="filesystem://")
CACHES = {
    "default": env.cache(
        "CACHE_URL",
        default=_broker_url if _broker_url.startswith(("redis://", "rediss://")) else "locmemcache://",
    )
}
CACHES["default"].setdefault("KEY_PREFIX", "leukportal")

# --- Security (effective when DEBUG is off) ---------------------------------
# `manage.py check --deploy` is clean with DEBUG=0 (tests/test_deploy.py).
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# No portal script reads the CSRF cookie (forms carry the token: tests/test_security_csrf_cookie.py), so no script
# injected into a page may either.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# Behind a TLS-terminating proxy (nginx) that sets X-Forwarded-Proto.
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Idle timeout: a session unused for this long is signed out
# (leukportal.middleware.IdleSessionTimeoutMiddleware; the pages' background
# polling does not count as use). A session lasts a working day at most from
# its sign-in, however active: the same middleware signs it out then, since
# the cookie's age restarts whenever the session is saved (every request).
SESSION_IDLE_TIMEOUT_SECONDS = env.int("SESSION_IDLE_TIMEOUT_SECONDS", default=30 * 60)
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=12 * 3600)

# Content Security Policy (django-csp) on every response. Starts from nothing
# allowed; each allowance says why. CSP_REPORT_ONLY=1 sends it as report-only.
_csp = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],  # static/ scripts only; templates have no inline script
    "style-src": ["'self'"],  # static/ stylesheets
    # The probability bars set their width in a style attribute; a style
    # attribute cannot run script.
    "style-src-attr": ["'unsafe-inline'"],
    "img-src": ["'self'", "data:"],  # smear images, thumbnails, heat maps; Bootstrap's SVG data icons
    "font-src": ["'self'"],
    "connect-src": ["'self'"],  # the status polling (fetch)
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "object-src": ["'none'"],
}
if env.bool("CSP_REPORT_ONLY", default=False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": _csp}
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": _csp}

# --- i18n / time --------------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# Date/time formats of en-gb replaced by the portal's one format (leukportal/formats/).
FORMAT_MODULE_PATH = ["leukportal.formats"]

# --- Static and media ---------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# Smear images. Never served as public static files: diagnosis.views serves
# them after a permission check. Point several machines at shared storage
# (e.g. an NFS mount) so web and workers see the same files.
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "media")))
MEDIA_URL = "/media/"
# Modes (octal) of every file and folder the storage writes under MEDIA_ROOT: uploads,
# thumbnails, heat maps, export zips. Patient images are for the portal's user (web and
# workers run as the same user) and its group, never for every local account (the umask's 0644).
FILE_UPLOAD_PERMISSIONS = int(env.str("FILE_UPLOAD_PERMISSIONS", default="640"), 8)
FILE_UPLOAD_DIRECTORY_PERMISSIONS = int(env.str("FILE_UPLOAD_DIRECTORY_PERMISSIONS", default="750"), 8)

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

# --- Smear uploads ------------------------------------------------------------
SMEAR_MAX_UPLOAD_BYTES = env.int("SMEAR_MAX_UPLOAD_BYTES", default=25 * 1024 * 1024)
SMEAR_MAX_PIXELS = env.int("SMEAR_MAX_PIXELS", default=40_000_000)
SMEAR_MAX_FILES_PER_UPLOAD = env.int("SMEAR_MAX_FILES_PER_UPLOAD", default=50)
# Smaller images, or longer than this ratio, are not smear fields or cells.
SMEAR_MIN_SIDE_PX = env.int("SMEAR_MIN_SIDE_PX", default=64)
SMEAR_MAX_ASPECT_RATIO = env.float("SMEAR_MAX_ASPECT_RATIO", default=5.0)
SMEAR_MAX_ATTEMPTS = env.int("SMEAR_MAX_ATTEMPTS", default=3)
# A classification message claims its own smear plus up to this many minus one
# other queued smears of the same kind, predicted in one forward pass.
SMEAR_BATCH_SIZE = env.int("SMEAR_BATCH_SIZE", default=32)
if SMEAR_BATCH_SIZE < 1:
    raise ImproperlyConfigured("SMEAR_BATCH_SIZE must be at least 1.")
DATA_UPLOAD_MAX_NUMBER_FILES = SMEAR_MAX_FILES_PER_UPLOAD
# Larger uploads spool to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Celery -------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=180)
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
if CELERY_TASK_SOFT_TIME_LIMIT >= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT.")
if CELERY_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_VISIBILITY_TIMEOUT must be longer than CELERY_TASK_TIME_LIMIT.")
# A message is acknowledged only after the task finished; a worker that dies
# mid-task leaves it to be re-delivered; each worker process reserves one
# message at a time. Duplicate deliveries are harmless: see services.claim_smear.
# Messages carry ids only, as JSON. Pinned rather than left to Celery's defaults: a worker that accepted pickle
# would run whatever anyone who can write to the broker sends it.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="leukportal")
# Heat maps wait on a queue of their own, consumed by a separate low-priority
# (niced) worker (`make worker`, `make run`): they never delay a classification.
CELERY_HEATMAP_QUEUE = env.str("CELERY_HEATMAP_QUEUE", default=f"{CELERY_TASK_DEFAULT_QUEUE}-heatmaps")
CELERY_TASK_ROUTES = {
    "diagnosis.compute_heatmap": {"queue": CELERY_HEATMAP_QUEUE},
    "diagnosis.retry_heatmap": {"queue": CELERY_HEATMAP_QUEUE},
    "diagnosis.build_export": {"queue": CELERY_HEATMAP_QUEUE},
}
# The reviewed-smear export is zipped by the low-priority worker, never in a
# web request (it grows with every signed case): its own time limit, and the
# zip is deleted this many days after it was built.
EXPORT_TIME_LIMIT_SECONDS = env.int("EXPORT_TIME_LIMIT_SECONDS", default=1800)
EXPORT_KEEP_DAYS = env.int("EXPORT_KEEP_DAYS", default=7)
if EXPORT_TIME_LIMIT_SECONDS + 60 >= CELERY_VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured("EXPORT_TIME_LIMIT_SECONDS + 60 must be below CELERY_VISIBILITY_TIMEOUT.")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
if CELERY_BROKER_URL.startswith("filesystem:"):
    _broker_dir = Path(env.str("CELERY_BROKER_DIR", default=str(VAR_DIR / "celery")))
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(_broker_dir / "queue"),
            "data_folder_out": str(_broker_dir / "queue"),
            "processed_folder": str(_broker_dir / "processed"),
            "control_folder": str(_broker_dir / "control"),
            "store_processed": False,
        }
    )
# A smear still "processing" this long after it was claimed belongs to a worker
# that died: the sweep re-queues it (or fails it after SMEAR_MAX_ATTEMPTS).
SMEAR_STALE_AFTER_SECONDS = env.int("SMEAR_STALE_AFTER_SECONDS", default=CELERY_TASK_TIME_LIMIT + 60)
# A smear "queued" this long whose message may have been lost gets it re-sent.
SMEAR_RESEND_QUEUED_AFTER_SECONDS = env.int("SMEAR_RESEND_QUEUED_AFTER_SECONDS", default=900)
if SMEAR_STALE_AFTER_SECONDS <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("SMEAR_STALE_AFTER_SECONDS must be longer than CELERY_TASK_TIME_LIMIT.")
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-smears": {
        "task": "diagnosis.sweep_stale_smears",
        "schedule": env.float("SWEEP_INTERVAL_SECONDS", default=60.0),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Pathologist review -------------------------------------------------------
# A case with a smear whose predicted-class probability is below this is
# flagged for closer review in the work queue.
REVIEW_LOW_CONFIDENCE_THRESHOLD = env.float("REVIEW_LOW_CONFIDENCE_THRESHOLD", default=0.6)
# The single-cell screen's targets on new patients (issue 12; the screening model card reports against them):
# the agreement dashboard checks the screen's flags against this laboratory's own reviewed cells.
SCREEN_TARGET_SENSITIVITY = env.float("SCREEN_TARGET_SENSITIVITY", default=0.95)
SCREEN_TARGET_SPECIFICITY = env.float("SCREEN_TARGET_SPECIFICITY", default=0.50)

# --- Case report ----------------------------------------------------------------
# The laboratory's header on the printed and PDF case report.
LAB_NAME = env.str("LAB_NAME", default="LeukPortal haematology laboratory")
LAB_ADDRESS = env.str("LAB_ADDRESS", default="")
LAB_ACCREDITATION = env.str("LAB_ACCREDITATION", default="")

# --- Notifications ----------------------------------------------------------------
# In-portal notifications are always on; with this, each is also e-mailed through
# the configured EMAIL_URL backend. PORTAL_BASE_URL makes the links in the mails absolute.
NOTIFY_BY_EMAIL = env.bool("NOTIFY_BY_EMAIL", default=False)
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="http://127.0.0.1:8000")
