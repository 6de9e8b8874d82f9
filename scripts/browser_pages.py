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
