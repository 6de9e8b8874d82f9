"""allauth's add-address form (ACCOUNT_FORMS["add_email"]), kept apart from accounts.forms: that module is
allauth's ACCOUNT_SIGNUP_FORM_CLASS, which allauth.account.forms imports, so importing allauth's forms there would
be circular."""
from allauth.account.forms import AddEmailForm
from allauth.account.internal.flows.email_verification import add_email_verification_sent_message
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model


class PortalAddEmailForm(AddEmailForm):
    """Adds an address to the signed-in account, except one that already belongs to another account (its login
    address or any address it added, confirmed or not). allauth would store it unconfirmed, and once the other
    account's owner pressed Confirm on the mail it sends, their password reset would reset this account instead
    (and with no primary address yet, the confirmation failed with a server error). Such an address is answered
    exactly as a free one is, "confirmation sent", so the form does not tell which addresses have accounts, but
    nothing is stored and no mail is sent."""

    def save(self, request):
        email = self.cleaned_data["email"]
        others = get_user_model().objects.exclude(pk=self.user.pk)
        if (others.filter(email__iexact=email).exists()
                or EmailAddress.objects.filter(email__iexact=email).exclude(user=self.user).exists()):
            add_email_verification_sent_message(request, email, signup=False)
            return EmailAddress(user=self.user, email=email)  # unsaved: no pk, no email_added signal
        return super().save(request)
