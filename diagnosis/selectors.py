"""The read side of the diagnosis app: what a page, a report or a form needs,
computed from the models. Services write and may call these; selectors never
call services (nor tasks or views) and write nothing.

Sections: queue (review_queue, next_case_in_queue, confirmable_smears, flagged_cells_awaiting_review), status
(smears_status_payload, case_status_payload), case pages (case_smears), labels (labels_for_smear,
labels_for_case, label_display, screen_call_display, model_call_display, audit_change_display, screening_summary_text), cases
(search_filter), learning (reviewed_smears, interval_over_cases, agreement_stats,
agreement_by_kind, screen_check).
"""
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count, Exists, Max, Min, OuterRef, Q

from .models import AuditEvent, Case, CellLabel, Prediction, Smear
from .models import label_display as _label_display


@dataclass
class QueueEntry:
    case: Case
    n_smears: int
    min_confidence: float
    stages: list
    low_confidence: bool
    disagreement: bool
    reviewed: int
    n_cells: int = 0
    blasts_flagged: int = 0
    outside_domain: int = 0  # smears the model could not judge: the pathologist must look at them
    ready_since: object = None  # when its last smear was classified (the case opened earlier)
    other_patient_images: int = 0  # images also in another patient's case: possibly the wrong patient's

    @property
    def flagged(self):
        return self.low_confidence or self.disagreement or bool(self.outside_domain) or bool(self.other_patient_images)

    @property
    def stages_display(self):
        """The predicted stages by their names ("Early Pre-B, Pre-B")."""
        return ", ".join(label_display(stage) for stage in self.stages)


def review_queue(threshold=None):
    """Cases awaiting review, oldest first: every smear classified (case
    status done) and not signed out. Each entry carries the lowest smear
    confidence and the flags: low confidence (a blood-smear field below
    REVIEW_LOW_CONFIDENCE_THRESHOLD) and disagreement (fields predicted as
    different stages), plus the number of single cells and of cells the
    screening model flagged as blasts. (A cell's confidence is not a useful
    flag: the screening threshold is deliberately low for sensitivity.)"""
    threshold = settings.REVIEW_LOW_CONFIDENCE_THRESHOLD if threshold is None else threshold
    cases = (
        Case.objects.filter(status=Case.Status.DONE, signed_out_at__isnull=True)
        .select_related("patient", "created_by")
        .prefetch_related("smears__prediction")
        .order_by("created_at", "pk")
    )
    # One query for the whole queue: per case, its images that are also in another patient's case.
    shared = Counter(Smear.objects.filter(case__in=cases).filter(_in_another_patients_case())
                     .values_list("case_id", flat=True))
    entries = []
    for case in cases:
        done = [s for s in case.smears.all()
                if s.status == Smear.Status.DONE and hasattr(s, "prediction") and not s.not_assessable]
        if not done:
            continue
        outside = [s for s in done if not s.prediction.in_domain]
        fields = [s.prediction for s in done if s.kind == Smear.Kind.FIELD and s.prediction.in_domain]
        cells = [s.prediction for s in done if s.kind == Smear.Kind.CELL and s.prediction.in_domain]
        confidences = [p.confidence for p in fields]
        stages = sorted({p.label for p in fields})
        entries.append(
            QueueEntry(
                case=case,
                n_smears=len(done),
                min_confidence=min(confidences) if confidences else None,
                stages=stages,
                low_confidence=bool(confidences) and min(confidences) < threshold,
                disagreement=len(stages) > 1,
                reviewed=sum(1 for s in done if s.review_label),
                n_cells=len(cells),
                blasts_flagged=sum(1 for p in cells if p.label == CellLabel.BLAST),
                outside_domain=len(outside),
                ready_since=max(s.prediction.created_at for s in done),
                other_patient_images=shared[case.pk],
            )
        )
    return entries


def next_case_in_queue(after: Case | None = None) -> Case | None:
    """The oldest case awaiting review (every smear classified, not signed
    out), other than `after`: where a pathologist goes after a sign-out."""
    cases = Case.objects.filter(status=Case.Status.DONE, signed_out_at__isnull=True).order_by("created_at", "pk")
    if after is not None:
        cases = cases.exclude(pk=after.pk)
    return cases.first()


def confirmable_smears(case: Case) -> list:
    """The smears "confirm all remaining" would confirm: classified, not yet
    reviewed, and with a suggestion to confirm. A smear outside the model's
    domain (no suggestion) or marked not assessable is left for the
    pathologist to judge one by one, and so is a cell the screen flagged for
    review (a flag asks for a look, and the pathologist's label is the one
    that calls a cell blast, never one click over many cells) and an image
    that is also in another patient's case (images_in_other_patients_cases)."""
    remaining = case.smears.filter(_suggestion_awaiting_review()).exclude(_flagged_cell()).exclude(
        _in_another_patients_case())
    return list(remaining.select_related("prediction", "case").order_by("created_at", "pk"))


def flagged_cells_awaiting_review(case: Case) -> int:
    """How many cells of ``case`` the screen flagged for review that nobody has labelled yet: left out of
    "confirm all remaining" (confirmable_smears), to be reviewed one by one."""
    return case.smears.filter(_suggestion_awaiting_review() & _flagged_cell()).count()


def _suggestion_awaiting_review():
    """Classified inside the model's domain (a suggestion exists), assessable, and not reviewed yet."""
    return Q(status=Smear.Status.DONE, review_label="", prediction__in_domain=True, not_assessable=False)


def _flagged_cell():
    return Q(kind=Smear.Kind.CELL, prediction__label=CellLabel.BLAST)


def _smear_status_item(smear, can_retry):
    prediction = getattr(smear, "prediction", None)
    return {
        "id": smear.pk,
        "status": smear.status,
        "status_display": smear.get_status_display(),
        "error": smear.error,
        "attempts": smear.attempts,
        "can_retry": can_retry and smear.can_retry,
        "kind": smear.kind,
        # "stage" is the model's label for either kind (a stage, or blast/normal).
        "stage": prediction.label if prediction else None,
        "stage_display": prediction.label_display if prediction else None,
        "probabilities": dict(prediction.ordered_probabilities()) if prediction else None,
        "threshold": prediction.threshold if prediction else None,
        "model": f"{prediction.model_name} {prediction.model_version}" if prediction else None,
        "in_domain": prediction.in_domain if prediction else None,
        "domain_score": prediction.domain_score if prediction else None,
        "domain_reason": prediction.domain_reason if prediction else "",
        "not_assessable": smear.not_assessable,
        "not_assessable_reason": smear.not_assessable_reason,
    }


def smears_status_payload(smears, user):
    """Status JSON for any set of smears (the technician's upload queue)."""
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(s, can_retry) for s in smears.select_related("prediction", "case").order_by("-created_at", "-pk")]
    return {
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def case_status_payload(case, user):
    """The JSON the case page polls while smears are being classified."""
    smears = case.smears.select_related("prediction").order_by("created_at", "pk")
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(smear, can_retry) for smear in smears]
    return {
        "case": case.pk,
        "status": case.status,
        "status_display": case.get_status_display(),
        # The workflow state (awaiting classification -> awaiting review ...), updated live on the case page.
        "state": case.state.value,
        "state_display": case.state.label,
        "suggested_stage": case.suggested_stage or None,
        "suggested_stage_display": case.get_suggested_stage_display() if case.suggested_stage else None,
        "suggested_confidence": case.suggested_confidence,
        "screening": case.screening_summary(),
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def case_smears(case):
    """A case's smears in upload order, each with what the review page and the report show of it: the model's
    prediction, who reviewed it and who marked it not assessable. One query however many smears the case holds
    (a case may hold hundreds of single cells)."""
    return case.smears.select_related("prediction", "reviewed_by", "not_assessable_by").order_by("created_at", "pk")


def labels_for_smear(smear):
    """The labels a pathologist may give this smear: the label set of the
    model that classified it (in the model's order)."""
    prediction = getattr(smear, "prediction", None)
    if prediction is None:
        return ()
    return prediction.labels


def labels_for_case(case):
    """Labels allowed as the final stage: the union of the label sets of the
    case's classified blood-smear fields (staging model), in model order.
    Single cells never give a stage: their result is the screening summary."""
    labels = []
    for prediction in Prediction.objects.filter(
        smear__case=case, smear__status=Smear.Status.DONE, smear__kind=Smear.Kind.FIELD
    ):
        labels += [label for label in prediction.labels if label not in labels]
    return tuple(labels)


def label_display(label):
    return _label_display(label)


def screen_call_display(label):
    """The screen's call on a cell in the portal's words: the pathologist calls blasts, the screen flags them."""
    return "flagged for review" if label == CellLabel.BLAST else "not flagged"


def model_call_display(kind, label):
    """A model's label on a smear of ``kind`` as the portal names it: a stage for a field, the screen's call for a
    cell (Flagged for review / Not flagged)."""
    return screen_call_display(label).capitalize() if kind == Smear.Kind.CELL else label_display(label)


def audit_change_display(event):
    """(before, after) of an audit event's Change column in the portal's words, or None when the event changed
    no value. The screen's prediction on a single cell reads as its call (Flagged for review / Not flagged), not
    as a blast label: the pathologist's label is the one called blast."""
    if not (event.old_value or event.new_value):
        return None
    if event.action == AuditEvent.Action.PREDICTION and event.smear is not None:
        prediction = getattr(event.smear, "prediction", None)
        if prediction is not None and not prediction.in_domain:  # its label was never a suggestion
            return "", "Outside the model's domain (no suggestion)"
        return "", model_call_display(event.smear.kind, event.new_value)
    return tuple(label_display(value) if value else "" for value in (event.old_value, event.new_value))


def screening_summary_text(case, reviewed=True, summary=None):
    """One line for the audit trail and reports; empty when no cell. ``summary`` is the case's
    ``screening_summary()`` where the caller already has it (it reads every cell of the case)."""
    if summary is None:
        summary = case.screening_summary()
    if not summary["cells"]:
        return ""
    if reviewed and not summary["reviewed"]:
        return "Single-cell screening, pathologist: no cell reviewed yet."
    if reviewed:
        frac = summary["reviewed_fraction"]
        return (f"Single-cell screening, pathologist: {summary['reviewed_blasts']} of {summary['reviewed']} "
                f"reviewed cells blast ({frac:.0%}).")
    frac = summary["flagged_fraction"]
    if summary["screened"]:
        text = (f"Single-cell screening, model: {summary['flagged']} of {summary['screened']} cells flagged by the "
                f"screen ({frac:.0%}).")
    else:
        text = "Single-cell screening, model: no cell screened yet."
    if summary["outside_domain"]:
        text += f" {summary['outside_domain']} cell(s) outside the model's domain (not screened)."
    return text


def search_filter(q):
    return Q(accession_number__icontains=q) | Q(patient__lab_id__icontains=q)


def reviewed_smears():
    """Smears with a pathologist label in signed-out cases (the labels that
    are final), with their predictions."""
    return (
        Smear.objects.filter(case__signed_out_at__isnull=False, status=Smear.Status.DONE, not_assessable=False)
        .exclude(review_label="")
        .filter(prediction__isnull=False)
        .select_related("prediction", "case", "reviewed_by")
        .order_by("case__signed_out_at", "pk")
    )


def interval_over_cases(outcomes):
    """The share of successes among ``outcomes`` ((case id, success) pairs) with its 95% interval from resampling
    whole cases (``ml.uncertainty.pooled_ratio_interval``): the smears of one patient look alike, so they are
    right or wrong together. None without outcomes."""
    per_case = {}
    for case_id, success in outcomes:
        right, total = per_case.get(case_id, (0, 0))
        per_case[case_id] = (right + bool(success), total + 1)
    if not per_case:
        return None
    # Imported here: importing the ml package loads ml.runtime, which the web process keeps out until a page needs it.
    from ml.uncertainty import pooled_ratio_interval

    right, totals = zip(*per_case.values())
    return {"right": sum(right), "total": sum(totals), **pooled_ratio_interval(right, totals)}


def agreement_stats(smears=None, kind=None):
    """Agreement between the model and the pathologists on reviewed smears,
    and the confusion matrix (rows: model label, columns: final label).
    `kind` (Smear.Kind) keeps one model's smears only; the dashboard shows
    one matrix per model kind."""
    smears = list(reviewed_smears() if smears is None else smears)
    if kind is not None:
        smears = [s for s in smears if s.kind == kind]
    # The model made no suggestion for an image outside its domain: nothing to agree or disagree with.
    outside = sum(1 for s in smears if not s.prediction.in_domain)
    smears = [s for s in smears if s.prediction.in_domain]
    labels = []
    for smear in smears:
        labels += [label for label in smear.prediction.labels if label not in labels]
    matrix = {m: {f: 0 for f in labels} for m in labels}
    agree = 0
    for smear in smears:
        matrix[smear.prediction.label][smear.review_label] = matrix[smear.prediction.label].get(smear.review_label, 0) + 1
        agree += smear.prediction.label == smear.review_label
    interval = interval_over_cases([(s.case_id, s.prediction.label == s.review_label) for s in smears])
    return {
        "n": len(smears),
        "agree": agree,
        "agreement": agree / len(smears) if smears else None,
        "agreement_interval": interval,
        "cases": interval["groups"] if interval else 0,
        "outside_domain": outside,
        "labels": labels,
        "matrix": [(m, [matrix[m].get(f, 0) for f in labels]) for m in labels],
    }


def agreement_by_kind(smears=None):
    """agreement_stats() per model kind: [(kind, kind display, stats)]."""
    smears = list(reviewed_smears() if smears is None else smears)
    return [(kind.value, kind.label, agreement_stats(smears, kind)) for kind in Smear.Kind]


#: Cases a verdict of the screen check needs: resampling two or three cases gives an interval far narrower than
#: what the next case may bring.
SCREEN_CHECK_MIN_CASES = 5


def screen_check(smears=None):
    """The single-cell screen against this laboratory's own reviews, for the model version that screened the
    newest of the reviewed cells (a new model has a new cut: its cells are not mixed with an older one's).

    Of the reviewed cells the pathologist called blast, how many the screen had flagged (sensitivity); of those
    called normal, how many it had left unflagged (specificity), each against its target, with an interval over
    cases (``interval_over_cases``). A verdict ("met": the interval's low end reaches the target, "missed": its
    high end stays below) needs SCREEN_CHECK_MIN_CASES cases; otherwise "too_few" (no reviewed cell of that
    label: "none"). Cells outside the model's domain got no flag and are not counted. None when no reviewed
    cell exists."""
    cells = [s for s in (reviewed_smears() if smears is None else smears)
             if s.kind == Smear.Kind.CELL and s.prediction.in_domain]
    if not cells:
        return None
    newest = max(cells, key=lambda s: (s.prediction.created_at, s.prediction.pk)).prediction
    current = [s for s in cells if s.prediction.model_version == newest.model_version]
    check = {"model_display": newest.model_display, "model_version": newest.model_version,
             "cells": len(current), "cases": len({s.case_id for s in current}),
             "earlier_versions_cells": len(cells) - len(current), "min_cases": SCREEN_CHECK_MIN_CASES, "rates": []}
    for name, truth, target in (("sensitivity", CellLabel.BLAST, settings.SCREEN_TARGET_SENSITIVITY),
                                ("specificity", CellLabel.NORMAL, settings.SCREEN_TARGET_SPECIFICITY)):
        # The screen is right on a blast it flagged and on a normal cell it did not flag.
        interval = interval_over_cases([(s.case_id, (s.prediction.label == CellLabel.BLAST) == (truth == CellLabel.BLAST))
                                        for s in current if s.review_label == truth])
        rate = {"name": name, "truth": truth, "target": target, "cells": 0, "right": 0, "cases": 0, "verdict": "none"}
        if interval:
            enough = interval["groups"] >= SCREEN_CHECK_MIN_CASES
            verdict = ("met" if enough and interval["low"] >= target else
                       "missed" if enough and interval["high"] < target else "too_few")
            rate.update(interval, cells=interval["total"], cases=interval["groups"], verdict=verdict)
        check["rates"].append(rate)
    return check


def model_versions_in_use(task):
    """The model versions that made this portal's predictions of ``task`` ("staging" or "screening"), newest use
    first: ``{"model_version", "model_name", "predictions", "first", "last"}`` each."""
    return list(
        Prediction.objects.filter(task=task)
        .values("model_version", "model_name")
        .annotate(predictions=Count("pk"), first=Min("created_at"), last=Max("created_at"))
        .order_by("-last")
    )


def _in_another_patients_case():
    """A smear's image stands in a case of another patient, as the same bytes (sha256) or the same picture in other
    bytes (pixels_sha256, where both have one: smears stored before it existed have none until `manage.py
    hash_smear_pixels`): most often a wrong-patient upload. Two EXISTS, one per index: with one OR inside,
    MariaDB scanned every smear for each smear asked about (341 s for the queue at 20,000 smears)."""
    others = Smear.objects.exclude(case__patient=OuterRef("case__patient"))
    return (Exists(others.filter(sha256=OuterRef("sha256")))
            | Exists(others.filter(pixels_sha256=OuterRef("pixels_sha256")).exclude(pixels_sha256="")))


def other_cases_with_images(keys, besides) -> dict:
    """{sha256: [Case, ...]}: for each (sha256, pixels_sha256) of ``keys``, the cases other than ``besides`` that
    hold the same image, as the same bytes or the same pixels (their patients loaded), oldest upload first. Read
    at upload (the technician's warning) and on the case's pages."""
    keys = list(keys)
    by_bytes = {sha256: sha256 for sha256, _ in keys}
    by_pixels = {pixels: sha256 for sha256, pixels in keys if pixels}
    found = {}
    others = (Smear.objects.filter(Q(sha256__in=list(by_bytes)) | Q(pixels_sha256__in=list(by_pixels)))
              .exclude(case=besides).select_related("case__patient").order_by("pk"))
    for smear in others:
        for key in {by_bytes.get(smear.sha256), by_pixels.get(smear.pixels_sha256) if smear.pixels_sha256 else None}:
            if key is not None and smear.case not in found.setdefault(key, []):
                found[key].append(smear.case)
    return found


def images_in_other_patients_cases(case) -> dict:
    """{smear id: ["ACC-0002 (patient P-0002)", ...]} for the smears of ``case`` whose image (the same bytes or
    the same pixels) is also in a case of another patient: shown on the smear until someone looks (the upload's warning reached only the
    technician)."""
    mine = {sha256: (pk, pixels) for pk, sha256, pixels in case.smears.values_list("pk", "sha256", "pixels_sha256")}
    found = {}
    keys = [(sha256, pixels) for sha256, (_, pixels) in mine.items()]
    for sha256, cases in other_cases_with_images(keys, besides=case).items():
        names = [f"{c.accession_number} (patient {c.patient.lab_id})" for c in cases if c.patient_id != case.patient_id]
        if names:
            found[mine[sha256][0]] = names
    return found
