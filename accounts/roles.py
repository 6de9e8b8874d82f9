"""Roles are Django groups. Their permissions are created by the data migration
accounts/migrations/0002_roles.py; this module only names them."""
TECHNICIAN = "Technician"
PATHOLOGIST = "Pathologist"
ADMIN = "Admin"
ALL_ROLES = (TECHNICIAN, PATHOLOGIST, ADMIN)


def has_role(user):
    """True when the user may see patient data at all (belongs to a role)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name__in=ALL_ROLES).exists()
