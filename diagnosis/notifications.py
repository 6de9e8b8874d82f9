"""In-portal notifications (and optional e-mail): a technician's upload
batch has been classified; a case entered the review queue.

Called by services under the case's row lock, inside the transaction of the
change, so a notification exists exactly when its event committed; the
unique (recipient, key) makes each event notify each person once even when
a worker refreshes the case again. E-mail (settings.NOTIFY_BY_EMAIL) goes
through the configured backend after the commit and never fails the event.
Imports models only; never services, views or tasks.
"""
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.mail import send_mail
from django.db import models, transaction
from django.utils import timezone

from .models import Case, Notification, Smear

logger = logging.getLogger(__name__)

PENDING = (Smear.Status.QUEUED, Smear.Status.PROCESSING)


def batch_progress(smears) -> list[dict]:
    """Progress of each upload batch among `smears` (a queryset), newest first:
    {"batch", "case", "total", "done", "failed", "finished", "percent"}."""
    rows = (
        smears.exclude(batch=None)
        .values("batch", "case_id", "case__accession_number", "uploaded_by")
        .annotate(
            total=models.Count("pk"),
            done=models.Count("pk", filter=models.Q(status=Smear.Status.DONE)),
            failed=models.Count("pk", filter=models.Q(status=Smear.Status.FAILED)),
            started=models.Min("created_at"),
        )
        .order_by("-started")
    )
    out = []
    for row in rows:
        finished = row["done"] + row["failed"]
        out.append({
            "batch": str(row["batch"]),
            "case": row["case_id"],
            "uploader": row["uploaded_by"],
            "accession": row["case__accession_number"],
            "total": row["total"],
            "done": row["done"],
            "failed": row["failed"],
            "finished": finished == row["total"],
            "percent": round(100 * finished / row["total"]) if row["total"] else 100,
            "started": row["started"],
        })
    return out


def case_refreshed(case: Case, previous_status: str) -> list[Notification]:
    """Notify what this refresh of the case finished: upload batches with no
    smear left to classify (their uploader), and the case entering the
    review queue (everyone who may review). Returns the new notifications."""
    created = _finished_batches(case)
    if case.status == Case.Status.DONE and previous_status != Case.Status.DONE and case.signed_out_at is None:
        created += _entered_queue(case)
    for notification in created:
        transaction.on_commit(lambda pk=notification.pk: send_email(pk))
    return created


def _finished_batches(case):
    created = []
    finished = [row for row in batch_progress(case.smears.all()) if row["finished"]]
    told = set(Notification.objects.filter(key__in=[f"batch:{row['batch']}" for row in finished])
               .values_list("key", flat=True))
    for row in finished:
        if f"batch:{row['batch']}" in told:
            continue
        uploader_id = row["uploader"]
        text = f"Case {case.accession_number}: {row['done']} of {row['total']} image{'s' if row['total'] != 1 else ''} classified"
        if row["failed"]:
            text += f", {row['failed']} failed (retry on the case page)"
        created += _notify([uploader_id], Notification.Kind.BATCH_DONE, case, text + ".", f"batch:{row['batch']}")
    return created


def _entered_queue(case):
    reviewers = reviewer_ids()
    n = case.smears.filter(status=Smear.Status.DONE).count()
    text = f"Case {case.accession_number} ({case.patient.lab_id}) is ready for review: {n} image{'s' if n != 1 else ''} classified."
    return _notify(reviewers, Notification.Kind.CASE_READY, case, text, f"queue:{case.pk}:{n}")


def reviewer_ids() -> list[int]:
    """Active users who may review cases (by role group, own permission or superuser)."""
    perm = Permission.objects.filter(content_type__app_label="diagnosis", codename="review_case").first()
    users = get_user_model().objects.filter(is_active=True)
    who = models.Q(is_superuser=True)
    if perm is not None:
        who |= models.Q(groups__permissions=perm) | models.Q(user_permissions=perm)
    return list(users.filter(who).values_list("pk", flat=True).distinct())


def _notify(recipient_ids, kind, case, text, key):
    already = set(Notification.objects.filter(key=key, recipient_id__in=recipient_ids).values_list("recipient_id", flat=True))
    return [
        Notification.objects.create(recipient_id=pk, kind=kind, case=case, text=text[:255], key=key[:100])
        for pk in recipient_ids
        if pk is not None and pk not in already
    ]


def send_email(notification_id: int) -> bool:
    """E-mail one notification through the configured backend when
    NOTIFY_BY_EMAIL is on; marks it e-mailed. A mail failure is logged, never raised."""
    if not settings.NOTIFY_BY_EMAIL:
        return False
    notification = Notification.objects.select_related("recipient").filter(pk=notification_id, emailed_at=None).first()
    if notification is None or not notification.recipient.email:
        return False
    # The mail names no patient or case (mail leaves the lab's systems): the link leads to the
    # portal, where the reader signs in and sees the notification itself.
    try:
        send_mail(
            subject=f"LeukPortal: {notification.get_kind_display().lower()}",
            message=(f"You have a new LeukPortal notification ({notification.get_kind_display().lower()}).\n\n"
                     f"{settings.PORTAL_BASE_URL.rstrip('/')}{notification.get_absolute_url()}\n"),
            from_email=None,
            recipient_list=[notification.recipient.email],
        )
    except Exception:  # the portal notification stands; mail is a courtesy
        logger.exception("Could not e-mail notification %s", notification_id)
        return False
    Notification.objects.filter(pk=notification_id).update(emailed_at=timezone.now())
    return True


def unread_count(user) -> int:
    if not getattr(user, "is_authenticated", False):
        return 0
    return Notification.objects.filter(recipient=user, read_at=None).count()
