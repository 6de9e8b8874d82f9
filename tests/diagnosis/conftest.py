import pytest


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def sent_messages(request, monkeypatch):
    """Record classification messages instead of sending them to a broker,
    except in tests marked real_broker. The list holds smear ids in order."""
    sent = []
    if request.node.get_closest_marker("real_broker"):
        return sent
    from diagnosis.tasks import classify_smear

    def fake_apply_async(args=None, kwargs=None, **options):
        sent.append(args[0])

    monkeypatch.setattr(classify_smear, "apply_async", fake_apply_async)
    return sent


@pytest.fixture(autouse=True)
def queued_heatmaps(request, monkeypatch):
    """Record heat-map messages (prediction ids, in order) instead of sending
    them, except in tests marked real_broker."""
    sent = []
    if request.node.get_closest_marker("real_broker"):
        return sent
    from diagnosis.tasks import compute_heatmap

    monkeypatch.setattr(compute_heatmap, "apply_async", lambda args=None, kwargs=None, **options: sent.append(args[0]))
    return sent


@pytest.fixture
def smear_factory(case, technician):
    """Create a stored smear (real image file) in a given state."""
    from django.core.files.base import ContentFile

    from diagnosis.models import Smear
    from tests.portal_testutils import image_bytes

    counter = {"n": 0}

    def make(status="queued", case_=None, **fields):
        counter["n"] += 1
        data = image_bytes(seed=counter["n"])
        smear = Smear(
            case=case_ or case,
            sha256=f"{counter['n']:064x}",
            width=64,
            height=48,
            image_format="PNG",
            size_bytes=len(data),
            original_filename=f"smear-{counter['n']}.png",
            uploaded_by=technician,
            status=status,
            **fields,
        )
        smear.image.save("smear.png", ContentFile(data), save=False)
        smear.thumbnail.save("thumb.jpg", ContentFile(image_bytes("JPEG", seed=counter["n"])), save=False)
        smear.save()
        return smear

    return make
