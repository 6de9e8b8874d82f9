"""Shared fixtures for the portal tests (accounts, diagnosis, ...)."""
import pytest
from django.contrib.auth.models import Group
from tests.portal_testutils import PASSWORD


@pytest.fixture
def make_user(db, django_user_model):
    counter = {"n": 0}

    def make(role=None, email=None, **extra):
        counter["n"] += 1
        user = django_user_model.objects.create_user(
            email=email or f"user{counter['n']}-{(role or 'none').lower()}@lab.example", password=PASSWORD, **extra
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def technician(make_user):
    return make_user("Technician")


@pytest.fixture
def pathologist(make_user):
    return make_user("Pathologist")


@pytest.fixture
def lab_admin(make_user):
    return make_user("Admin", is_staff=True)


@pytest.fixture
def no_role_user(make_user):
    return make_user(None)


def client_for(client, user):
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def tech_client(client, technician):
    return client_for(client, technician)


@pytest.fixture
def patient(db, technician):
    from diagnosis.models import Patient

    return Patient.objects.create(lab_id="P-0001", sex="F", birth_year=1984, created_by=technician)


@pytest.fixture
def case(db, patient, technician):
    from diagnosis.models import Case

    return Case.objects.create(patient=patient, accession_number="ACC-0001", created_by=technician)
