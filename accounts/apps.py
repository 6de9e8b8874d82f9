from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self):
        from allauth.account.signals import email_confirmed
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in
        from django.db.models.signals import post_save

        from leukportal.middleware import start_session_clock

        from .adapter import promote_on_confirmation, vouch_for_address

        # Every sign-in (allauth's views, the admin's, force_login) starts the session's absolute limit.
        user_logged_in.connect(start_session_clock, dispatch_uid="leukportal.start_session_clock")
        # The bootstrap administrator is made when that address is confirmed (accounts.adapter).
        email_confirmed.connect(promote_on_confirmation, dispatch_uid="accounts.promote_on_confirmation")
        # An account an administrator or the command line makes has its address vouched for (accounts.adapter).
        post_save.connect(vouch_for_address, sender=get_user_model(), dispatch_uid="accounts.vouch_for_address")
