"""The worker side of classification: claim a queued smear, check the
model's output, and record the prediction, the heat map or the failure."""
import logging
import math

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..models import SCREENING_LABELS, AuditEvent, Case, CellLabel, Prediction, Smear, Stage
from .audit import record_event
from .case_state import _refresh_case_by_id
from .errors import InvalidModelOutput
from .transactions import retry_transaction

logger = logging.getLogger(__name__)


def claim_smear(smear_id):
    """Atomically move a smear from queued to processing. Returns the smear if
    this caller won the claim, None otherwise (already claimed, finished, or
    gone): a re-delivered message therefore never classifies twice."""
    now = timezone.now()
    won = Smear.objects.filter(pk=smear_id, status=Smear.Status.QUEUED).update(
        status=Smear.Status.PROCESSING, claimed_at=now, attempts=F("attempts") + 1, error="", updated_at=now
    )
    if not won:
        return None
    # The case stays "processing": queued and processing both count as pending.
    return Smear.objects.select_related("case").get(pk=smear_id)


def _claimed(now):
    return {"status": Smear.Status.PROCESSING, "claimed_at": now, "attempts": F("attempts") + 1, "error": "",
            "updated_at": now}


@retry_transaction
def claim_batch(smear_id, *, limit):
    """Claim a message's smear and up to `limit` - 1 other queued smears of the
    same kind, oldest first, for one forward pass. Returns the claimed smears,
    the message's own first; [] when its own smear is no longer queued (a
    duplicate or re-delivered message, a finished or deleted smear): such a
    message claims nothing.

    The message's smear is claimed by the conditional UPDATE of claim_smear;
    the others are read with SELECT ... FOR UPDATE SKIP LOCKED (rows another
    worker is claiming are passed over, not waited for) and claimed by one
    UPDATE in the same transaction. Claiming its own smear first means a
    message never becomes a no-op because its smear was merely locked by
    another claimer's scan: each message either gets its smear or finds it
    taken for good. Every claimed smear carries claimed_at and one more
    attempt, so the sweep re-queues the whole batch of a worker that died.
    (SQLite ignores FOR UPDATE; it runs one writing transaction at a time.)"""
    now = timezone.now()
    with transaction.atomic():
        if not Smear.objects.filter(pk=smear_id, status=Smear.Status.QUEUED).update(**_claimed(now)):
            return []
        kind = Smear.objects.filter(pk=smear_id).values_list("kind", flat=True).get()
        others = []
        if limit > 1:
            others = list(
                Smear.objects.select_for_update(skip_locked=True)
                .filter(status=Smear.Status.QUEUED, kind=kind)
                .order_by("pk")  # oldest first; the primary key order lets the scan stop at the limit
                .values_list("pk", flat=True)[: limit - 1]
            )
        if others:
            Smear.objects.filter(pk__in=others, status=Smear.Status.QUEUED).update(**_claimed(now))
        # Read back what this transaction holds: the rows are locked (or, on SQLite, the database is).
        claimed = {s.pk: s for s in Smear.objects.select_related("case").filter(
            pk__in=[smear_id, *others], status=Smear.Status.PROCESSING, claimed_at=now)}
    return [claimed[pk] for pk in [smear_id, *others] if pk in claimed]


def _checked_probabilities(result, labels):
    try:
        raw = result["probabilities"]
        if set(raw) != set(labels):
            raise ValueError(f"classes {sorted(raw)} instead of {sorted(labels)}")
        probs = {label: float(raw[label]) for label in labels}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidModelOutput(f"the model returned an unexpected result ({exc!r}).") from None
    if not all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in probs.values()):
        raise InvalidModelOutput("the model returned probabilities outside [0, 1].")
    if abs(sum(probs.values()) - 1.0) > 1e-3:
        raise InvalidModelOutput(f"the model's probabilities sum to {sum(probs.values()):.4f}, not 1.")
    return {label: min(1.0, max(0.0, p)) for label, p in probs.items()}


def validate_result(result, kind=Smear.Kind.FIELD):
    """Check the predictor's dict for a smear of this kind; return
    (task, label, {label: probability}, threshold).

    * field (staging model): {"stage", "probabilities": the four stages};
    * cell (screening model): {"label": "blast"|"normal", "probabilities":
      {"blast", "normal"}, "threshold"}, and the label must be the one the
      threshold gives (blast iff P(blast) >= threshold).
    """
    if not isinstance(result, dict):
        raise InvalidModelOutput(f"the model returned an unexpected result ({type(result).__name__}).")
    if kind == Smear.Kind.CELL:
        if "stage" in result:
            raise InvalidModelOutput("a single cell was classified by the staging model instead of the screening model.")
        probs = _checked_probabilities(result, SCREENING_LABELS)
        label = result.get("label")
        if label not in SCREENING_LABELS:
            raise InvalidModelOutput(f"the screening model returned an unknown label ({label!r}).")
        try:
            threshold = float(result["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelOutput(f"the screening model returned no usable threshold ({exc!r}).") from None
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidModelOutput(f"the screening model's threshold {threshold} is outside [0, 1].")
        expected = CellLabel.BLAST if probs[CellLabel.BLAST] >= threshold else CellLabel.NORMAL
        # Within float rounding of the threshold either label is the model's call.
        if label != expected and abs(probs[CellLabel.BLAST] - threshold) > 1e-6:
            raise InvalidModelOutput(
                f"the screening model's label {label!r} does not follow from P(blast) "
                f"{probs[CellLabel.BLAST]:.3f} and its threshold {threshold:.3f}."
            )
        return Prediction.Task.SCREENING, label, probs, threshold
    if "label" in result and "stage" not in result:
        raise InvalidModelOutput("a blood-smear field was classified by the screening model instead of the staging model.")
    try:
        stage = Stage(result["stage"]).value
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelOutput(f"the model returned an unexpected result ({exc!r}).") from None
    probs = _checked_probabilities(result, Stage.values)
    return Prediction.Task.STAGING, stage, probs, None


def validate_domain(result):
    """The domain check's verdict in a predictor's dict: (in_domain, domain_score, reason).
    Every result of `ml` carries it; a result without one is refused rather than shown as a suggestion."""
    in_domain = result.get("in_domain") if isinstance(result, dict) else None
    if not isinstance(in_domain, bool):
        raise InvalidModelOutput("the model's result has no domain check verdict (in_domain).")
    try:
        score = float(result["domain_score"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelOutput(f"the model's result has no usable domain score ({exc!r}).") from None
    if not math.isfinite(score):
        raise InvalidModelOutput("the model's domain score is not a finite number.")
    reason = str(result.get("reason") or "").strip()[:300]
    if not in_domain and not reason:
        reason = "the image is unlike the images the model was trained on"
    return in_domain, score, reason if not in_domain else ""


def record_prediction(smear_id, result, latency_ms):
    """Store the prediction of a smear this worker has claimed (either model's
    output, checked against the smear's kind). Raises InvalidModelOutput for
    a result that fails the checks; returns None when the smear is gone or no
    longer processing (the prediction is dropped).

    Locks the case row first, then the smear, as every writer of a case does
    (upload, review, sign-out): one lock order means two workers finishing
    smears of one case wait for each other instead of deadlocking. A deadlock
    or lock timeout still reported by the database runs the transaction again."""
    row = Smear.objects.filter(pk=smear_id).values_list("kind", "case_id").first()
    if row is None:
        logger.warning("Smear %s is gone; prediction dropped", smear_id)
        return None
    kind, case_id = row
    checked = _checked_result(result, kind)
    return _write_case_results(case_id, {smear_id: checked}, {}, latency_ms)[0].get(smear_id)


def record_predictions(results, *, latency_ms):
    """Store the results of a batch of claimed smears ({smear_id: result},
    matched by id). Each result is checked on its own: one that fails the
    checks fails its smear only, with the reason. One transaction per case,
    cases in id order (two workers recording batches that share cases lock
    them in the same order), each case recomputed once for the whole batch.

    Returns ({smear_id: Prediction}, {smear_id: reason of failure}); smears
    gone or no longer processing are in neither (dropped, logged)."""
    rows = dict((pk, (kind, case_id)) for pk, kind, case_id in
                Smear.objects.filter(pk__in=list(results)).values_list("pk", "kind", "case_id"))
    by_case = {}
    for smear_id, result in results.items():
        if smear_id not in rows:
            logger.warning("Smear %s is gone; prediction dropped", smear_id)
            continue
        kind, case_id = rows[smear_id]
        checked, invalid = by_case.setdefault(case_id, ({}, {}))
        try:
            checked[smear_id] = _checked_result(result, kind)
        except InvalidModelOutput as exc:
            invalid[smear_id] = f"Classification failed: {exc}"
    predictions, failures = {}, {}
    for case_id in sorted(by_case):
        stored, failed = _write_case_results(case_id, *by_case[case_id], latency_ms)
        predictions.update(stored)
        failures.update(failed)
    return predictions, failures


def _checked_result(result, kind):
    task, label, probs, threshold = validate_result(result, kind)
    in_domain, domain_score, domain_reason = validate_domain(result)
    return {"task": task, "label": label, "probabilities": probs, "threshold": threshold, "in_domain": in_domain,
            "domain_score": domain_score, "domain_reason": domain_reason,
            "model_name": str(result.get("model", ""))[:100], "model_version": str(result.get("model_version", ""))[:100]}


@retry_transaction
def _write_case_results(case_id, checked, invalid, latency_ms):
    """Under the case's lock, then the smears' (one lock order): a prediction
    for each checked result, a failure for each invalid one, smears no longer
    processing skipped; then the case recomputed once. Returns
    ({smear_id: Prediction}, {smear_id: reason}) of what it wrote."""
    predictions, failed = {}, {}
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        smears = Smear.objects.select_for_update().filter(pk__in=[*checked, *invalid]).order_by("pk")
        for smear in smears:
            if smear.status != Smear.Status.PROCESSING:
                logger.warning("Smear %s is %s, not processing; result dropped", smear.pk, smear.status)
            elif case.is_signed_out:
                # Sign-out waits for pending smears, so this is a result that should not exist: never change a signed case.
                reason = "The case was signed out before this result arrived; the result was not stored."
                _fail(case, smear, reason)
                failed[smear.pk] = reason
            elif smear.pk in invalid:
                _fail(case, smear, invalid[smear.pk])
                failed[smear.pk] = invalid[smear.pk]
            else:
                predictions[smear.pk] = _store_prediction(case, smear, checked[smear.pk], latency_ms)
        _refresh_case_by_id(case_id)
    return predictions, failed


def _store_prediction(case, smear, checked, latency_ms):
    probs, threshold, in_domain = checked["probabilities"], checked["threshold"], checked["in_domain"]
    prediction = Prediction.objects.create(smear=smear, latency_ms=max(0, int(round(latency_ms))), **checked)
    smear.status = Smear.Status.DONE
    smear.error = ""
    smear.transient_failure = False
    smear.save(update_fields=["status", "error", "transient_failure", "updated_at"])
    detail = ", ".join(f"{k} {p:.3f}" for k, p in probs.items())
    if threshold is not None:
        detail += f"; threshold on P(blast) {threshold:.3f}"
    detail += f"; domain score {checked['domain_score']:.3f}"
    if not in_domain:
        detail += f"; outside the model's domain, no suggestion: {checked['domain_reason']}"
    record_event(
        case, AuditEvent.Action.PREDICTION, smear=smear, new_value=checked["label"],
        model_version=f"{prediction.model_name} {prediction.model_version}".strip(), detail=detail,
    )
    return prediction


def _fail(case, smear, reason, transient=False):
    smear.status, smear.error, smear.transient_failure = Smear.Status.FAILED, reason[:2000], transient
    smear.save(update_fields=["status", "error", "transient_failure", "updated_at"])
    record_event(case, AuditEvent.Action.CLASSIFICATION_FAILED, smear=smear, detail=reason)


def pending_heatmaps():
    """Predictions whose heat map is still to be made: neither stored nor failed, and inside the model's domain
    (outside it there is no suggestion to explain, so no map is ever made). The one definition for the worker's
    claim, the sweep and sign-out."""
    return Prediction.objects.filter(heatmap="", heatmap_error="", in_domain=True)


def claim_heatmap(prediction_id):
    """A worker starts a prediction's heat map: one more attempt, and the time
    it started. Returns the prediction, or None when there is nothing to do:
    stored or failed meanwhile (a duplicate message), a prediction outside the
    model's domain (it never gets a map), or already started SMEAR_MAX_ATTEMPTS
    times by workers that died (then recorded as unavailable).
    Only starts count, never the time spent waiting on the heat-map queue."""
    pending = pending_heatmaps().filter(pk=prediction_id)
    attempts = pending.values_list("heatmap_attempts", flat=True).first()
    if attempts is None:
        return None
    if attempts >= settings.SMEAR_MAX_ATTEMPTS:
        pending.update(heatmap_error=f"Heat map unavailable: the worker stopped while computing it ({attempts} attempts).")
        return None
    if not pending.filter(heatmap_attempts=attempts).update(heatmap_attempts=attempts + 1,
                                                            heatmap_requested_at=timezone.now()):
        return None  # another worker started it at this very moment
    return Prediction.objects.select_related("smear").get(pk=prediction_id)


#: Recorded on a heat map still pending when its case was signed out: the signed
#: report shows what the pathologist saw, so a map made later is never added to it.
HEATMAP_AFTER_SIGN_OUT = "Heat map unavailable: the case was signed out before it was ready."


def close_pending_heatmaps(case):
    """At sign-out: every heat map of the case neither stored nor failed yet is
    recorded as unavailable, so no worker stores one on the signed case."""
    return pending_heatmaps().filter(smear__case=case).update(
        heatmap_error=HEATMAP_AFTER_SIGN_OUT)


def store_heatmap(prediction_id, image_bytes, explained_class=""):
    """Store the heat-map overlay (JPEG bytes) the worker computed after the
    prediction. Never touches the prediction's result. The file is written
    first, holding no lock; it is attached under the prediction's row lock,
    or deleted again when the case was signed out meanwhile (returns None):
    the signed report shows what the pathologist saw."""
    field = Prediction._meta.get_field("heatmap")
    name = field.storage.save(field.generate_filename(None, "heatmap.jpg"), ContentFile(image_bytes))
    try:
        attached = _attach_heatmap(prediction_id, name)
    except BaseException:
        field.storage.delete(name)
        raise
    if not attached:
        field.storage.delete(name)
        logger.info("Heat map of prediction %s not stored: the case is signed out", prediction_id)
        return None
    return Prediction.objects.get(pk=prediction_id)


@retry_transaction
def _attach_heatmap(prediction_id, name):
    with transaction.atomic():
        # Sign-out closes pending maps (close_pending_heatmaps) in its own transaction; this row lock orders
        # the two. The case read covers maps left pending on cases signed out before sign-out closed them.
        prediction = Prediction.objects.select_for_update().only("heatmap_error").get(pk=prediction_id)
        if (prediction.heatmap_error == HEATMAP_AFTER_SIGN_OUT
                or Case.objects.filter(smears__prediction__pk=prediction_id, signed_out_at__isnull=False).exists()):
            pending_heatmaps().filter(pk=prediction_id).update(heatmap_error=HEATMAP_AFTER_SIGN_OUT)
            return False
        Prediction.objects.filter(pk=prediction_id).update(heatmap=name, heatmap_error="")
        return True


def heatmap_failed(prediction_id, reason):
    """Record why no heat map could be made; the prediction stays as it is."""
    Prediction.objects.filter(pk=prediction_id).update(heatmap_error=reason[:2000])


@retry_transaction
def mark_failed(smear_id, reason, *, transient=False):
    """Mark a claimed smear failed with a readable reason; nothing else in the
    case is touched, the image stays stored and the smear can be retried.
    `transient` (a temporary database error) lets the sweep retry it by itself.
    Locks the case first, like record_prediction."""
    case_id = Smear.objects.filter(pk=smear_id).values_list("case_id", flat=True).first()
    if case_id is None:
        return False
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        smear = Smear.objects.select_for_update().filter(pk=smear_id, status=Smear.Status.PROCESSING).first()
        if smear is not None:
            _fail(case, smear, reason, transient)
            _refresh_case_by_id(case_id)
    return smear is not None
