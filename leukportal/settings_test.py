"""Settings of the test suite (pytest.ini): the portal in development mode, as
`make run` starts it. leukportal.settings turns DEBUG off unless told, which
would ask the tests for a SECRET_KEY and HTTPS. Set in the environment, not
here, so that the Celery workers and scripts the tests start run the same way."""
import os

os.environ.setdefault("DEBUG", "1")

from leukportal.settings import *  # noqa: E402,F403
