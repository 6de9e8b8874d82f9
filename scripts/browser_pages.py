"""What the browser scripts (screenshots.py, axe_audit.py) share: waiting for the development server, and
loading every image of a page (thumbnails load lazily: below the window they would be blank boxes)."""
import time
import urllib.request


def wait_for(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def load_all_images(page):
    # (page.wait_for_function would evaluate a string, which the portal's CSP refuses.)
    page.evaluate("() => Promise.all(Array.from(document.images, img => { img.loading = 'eager'; "
                  "return img.decode().catch(() => null); }))")


def demo_users(password):
    """(admin, technician, pathologist) of a demo portal, one per role, all with ``password`` (Django set up)."""
    from django.contrib.auth.models import Group

    from accounts.models import User

    def with_role(user, role):
        user.groups.add(Group.objects.get(name=role))
        return user

    return (with_role(User.objects.create_superuser("admin@lab.example", password), "Admin"),
            with_role(User.objects.create_user("tech@lab.example", password, full_name="Tina Tech"), "Technician"),
            with_role(User.objects.create_user("path@lab.example", password, full_name="Paula Path", title="Dr"),
                      "Pathologist"))
