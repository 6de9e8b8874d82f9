"""Transient database errors (deadlock, lock wait timeout) and the decorator
that runs a transaction again after one. Imports Django's database layer only."""
import functools
import logging
import random
import time

from django.db import OperationalError, transaction

logger = logging.getLogger(__name__)


#: MySQL/MariaDB error codes of a transaction that may succeed when run again:
#: 1213 deadlock (the server rolled it back), 1205 lock wait timeout.
TRANSIENT_DB_ERROR_CODES = {1205, 1213}
TRANSACTION_ATTEMPTS = 4


def is_transient_db_error(exc: BaseException) -> bool:
    """A deadlock, a lock wait timeout or SQLite's "database is locked": the
    same transaction run again later can succeed."""
    if not isinstance(exc, OperationalError):
        return False
    code = exc.args[0] if exc.args else None
    return code in TRANSIENT_DB_ERROR_CODES or "database is locked" in str(exc) or "deadlock" in str(exc).lower()


def retry_transaction(func):
    """Run a function that opens its own transaction again (with a short random
    back-off) when the database rolled it back for a transient reason. Inside
    an outer transaction nothing is retried: the outer one is lost and must be
    retried by its own caller."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if (attempt == TRANSACTION_ATTEMPTS or not is_transient_db_error(exc)
                        or transaction.get_connection().in_atomic_block):
                    raise
                logger.warning("%s: transient database error (%s); attempt %s of %s",
                               func.__name__, exc, attempt + 1, TRANSACTION_ATTEMPTS)
                time.sleep(random.uniform(0.02, 0.1) * 2**attempt)

    return wrapper
