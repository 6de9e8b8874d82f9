"""On SQLite (the default without DATABASE_URL) two requests that read a case and then write it wait for each other
instead of one failing with "database is locked" (second audit round R8: a 500 under concurrent sign-outs, addenda
and uploads). The transactions take the write lock when they begin (OPTIONS transaction_mode IMMEDIATE)."""
import threading

import pytest
from django.db import connection, connections, transaction

from diagnosis.models import Case

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's locking; MariaDB has row locks")


def test_sqlite_transactions_take_the_write_lock_when_they_begin(settings):
    assert settings.DATABASES["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # keeps the roles the migrations made
def test_two_read_then_write_transactions_on_one_case_both_succeed(case):
    both_read = threading.Barrier(2)
    errors = []

    def read_then_write(note):
        try:
            with transaction.atomic():
                Case.objects.get(pk=case.pk)  # read: with a deferred transaction, a shared lock only
                try:
                    both_read.wait(timeout=1)  # the other one reads too (deferred), or waits to begin (IMMEDIATE)
                except threading.BrokenBarrierError:
                    pass
                Case.objects.filter(pk=case.pk).update(clinical_note=note)
        except Exception as exc:  # noqa: BLE001 -- recorded for the assertion
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=read_then_write, args=(f"note {n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    case.refresh_from_db()
    assert case.clinical_note in ("note 0", "note 1")
