"""Files the portal writes outside its media storage (backups, exported training folders) hold patient images
and data: they get the modes of the media, FILE_UPLOAD_PERMISSIONS / FILE_UPLOAD_DIRECTORY_PERMISSIONS, never
the umask's world-readable default."""
import os
from pathlib import Path

from django.conf import settings


def file_mode():
    return settings.FILE_UPLOAD_PERMISSIONS or 0o640


def dir_mode():
    return settings.FILE_UPLOAD_DIRECTORY_PERMISSIONS or 0o750


def make_private_dirs(path):
    """Create path and its missing parents with the media folder mode (existing folders are left as they are)."""
    path = Path(path)
    if path.is_dir():
        return
    make_private_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    os.chmod(path, dir_mode())


def create_private_file(path, mode="wb", **open_args):
    """A new file (FileExistsError if there is one: nothing is overwritten) with the media file mode, open for
    writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    os.fchmod(fd, file_mode())  # exactly the mode, whatever the umask
    return os.fdopen(fd, mode, **open_args)
