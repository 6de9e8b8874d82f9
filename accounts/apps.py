from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self):
        from allauth.account.signals import email_confirmed
        from django.contrib.auth.signals import user_logged_in

        from leukportal.middleware import start_session_clock

        from .adapter import promote_on_confirmation

        # Every sign-in (allauth's views, the admin's, force_login) starts the session's absolute limit.
        user_logged_in.connect(start_session_clock, dispatch_uid="leukportal.start_session_clock")
        # The bootstrap administrator is made when that address is confirmed (accounts.adapter).
        email_confirmed.connect(promote_on_confirmation, dispatch_uid="accounts.promote_on_confirmation")
