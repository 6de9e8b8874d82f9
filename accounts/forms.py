from django import forms

from .models import User

_full_name = User._meta.get_field("full_name")
_title = User._meta.get_field("title")


class SignupForm(forms.Form):
    """Extra sign-up fields (ACCOUNT_SIGNUP_FORM_CLASS): people sign cases
    out under their names, so the name is asked for at sign-up."""

    full_name = forms.CharField(
        label="Full name", max_length=_full_name.max_length, help_text=_full_name.help_text,
        widget=forms.TextInput(attrs={"autocomplete": "name", "placeholder": "e.g. Jane Roe"}),
    )
    title = forms.CharField(
        label="Professional title", max_length=_title.max_length, required=False, help_text=_title.help_text,
        widget=forms.TextInput(attrs={"autocomplete": "honorific-prefix"}),
    )

    def clean_full_name(self):
        from diagnosis.services.text import has_visible_character, without_control_characters

        name = without_control_characters(self.cleaned_data["full_name"]).strip()
        if not has_visible_character(name):
            raise forms.ValidationError("Type your name as it should appear on signed reports.")
        return name

    def clean_title(self):
        from diagnosis.services.text import has_visible_character, without_control_characters

        title = without_control_characters(self.cleaned_data.get("title", "")).strip()
        return title if has_visible_character(title) else ""

    def clean(self):
        """The address compared as the database compares it: MariaDB's collation takes "tech@läb" for "tech@lab",
        so its unique index refused the new row that allauth's own check had let through (a 500 at sign-up)."""
        cleaned = super().clean()
        email = cleaned.get("email")
        if email and User.objects.filter(email=email).exists():
            self.add_error("email", "A user is already registered with this email address.")
        return cleaned

    def signup(self, request, user):
        user.full_name = self.cleaned_data["full_name"]
        user.title = self.cleaned_data.get("title", "")
        user.save(update_fields=["full_name", "title"])
