from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        email = self.normalize_email(email).lower()
        user = self.model(email=email, **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields["is_staff"] = True
        extra_fields["is_superuser"] = True
        return self._create_user(email, password, **extra_fields)


class User(AbstractUser):
    """A portal user. The email address is the login; there is no username."""

    username = None
    email = models.EmailField("email address", unique=True)
    # How the person is named on cases, reports and the audit trail.
    full_name = models.CharField(
        "full name", max_length=150, blank=True, db_default="", help_text="As printed on reports, up to 150 characters."
    )
    title = models.CharField(
        "professional title",
        max_length=64,
        blank=True,
        db_default="",
        help_text="Optional, e.g. “Dr” or “Consultant haematopathologist”; up to 64 characters.",
    )

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = []

    objects = UserManager()

    class Meta:
        ordering = ["email"]

    def __str__(self):
        return self.display_name

    def get_full_name(self):
        return self.full_name.strip() or super().get_full_name()

    @property
    def display_name(self):
        """"Dr Jane Roe" (title and full name), the name alone, or the e-mail address."""
        name = self.get_full_name()
        if not name:
            return self.email
        return f"{self.title.strip()} {name}".strip()
