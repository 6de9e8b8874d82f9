"""Pathologist review: work queue, review screen, sign-out, addenda, report,
dashboard; and the technician's upload queue. Rules live in services/."""

import re

from django.contrib import messages
from django.http import HttpResponse, JsonResponse
from django.utils.http import content_disposition_header
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views import View
from django.views.generic import DetailView, TemplateView

from accounts.mixins import RolePermissionRequiredMixin

from . import reports, selectors, services
from . import notifications
from .models import Case, Notification, RejectedUpload, Smear


class ReviewQueueView(RolePermissionRequiredMixin, TemplateView):
    permission_required = "diagnosis.review_case"
    template_name = "diagnosis/review_queue.html"

    def get_context_data(self, **kwargs):
        from django.conf import settings

        return super().get_context_data(
            entries=services.review_queue(), threshold=settings.REVIEW_LOW_CONFIDENCE_THRESHOLD, **kwargs
        )


class CaseReviewView(RolePermissionRequiredMixin, DetailView):
    permission_required = "diagnosis.review_case"
    template_name = "diagnosis/case_review.html"
    queryset = Case.objects.with_state().select_related("patient", "created_by", "signed_out_by")
    context_object_name = "case"

    def get(self, request, *args, **kwargs):
        self.object = self.get_object()
        if self.object.is_cancelled:  # nothing to review: the case page says why
            messages.info(request, f"Case {self.object.accession_number} was cancelled: there is nothing to review.")
            return redirect(self.object)
        return self.render_to_response(self.get_context_data(object=self.object))

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        # The finalize form sends back case.review_version, read (get_object) before the smears below: a review saved
        # in between makes the page look newer than its version (a needless conflict), never older (a stale sign-out).
        case = self.object
        smears = list(selectors.case_smears(case))
        for smear in smears:
            smear.allowed_labels = [(label, services.label_display(label)) for label in services.labels_for_smear(smear)]
        ctx.update(
            smears=smears,
            final_labels=[(label, services.label_display(label)) for label in services.labels_for_case(case)],
            problems=services.sign_out_problems(case),
            # Outside the domain and not judged yet: once labelled or set aside, nothing more is asked.
            outside_domain=sum(1 for s in smears if s.outside_domain and not s.not_assessable and not s.review_label),
            screening=case.screening_summary(),
            has_fields=case.has_field_smears(),
            addenda=case.addenda.select_related("author"),
            audit_events=case.audit_events.select_related("actor", "smear__prediction"),
            remaining=len(services.confirmable_smears(case)),
            flagged_left=selectors.flagged_cells_awaiting_review(case),
            also_in=selectors.images_in_other_patients_cases(case),
            next_case=services.next_case_in_queue(after=case),
        )
        return ctx


class SmearReviewView(RolePermissionRequiredMixin, View):
    permission_required = "diagnosis.review_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        smear = get_object_or_404(Smear.objects.select_related("case"), pk=pk)
        expected = posted_version(request, "version", missing=None)  # an older page: no check
        try:
            services.review_smear(smear, request.user, request.POST.get("label", ""), request.POST.get("reason", ""),
                                  expected_version=expected)
        except services.CaseLocked as exc:
            return _refuse_locked(request, exc, _review_url(smear.case))
        except services.ReviewConflict as exc:
            messages.error(request, f"“{smear.original_filename}”: {exc}")
            if _wants_status(request):
                return HttpResponse(str(exc), status=409)
        except services.ReviewError as exc:
            messages.error(request, f"“{smear.original_filename}”: {exc}")
        else:
            messages.success(request, f"“{smear.original_filename}” reviewed.")
        return redirect(_review_url(smear.case) + f"#smear-{smear.pk}")


class SmearAssessabilityView(RolePermissionRequiredMixin, View):
    """POST action=not_assessable (with a reason) or action=assessable: the pathologist's judgement that an
    image cannot be assessed, audited, and respected by sign-out, suggestion, report and export."""

    permission_required = "diagnosis.review_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        smear = get_object_or_404(Smear.objects.select_related("case"), pk=pk)
        action = request.POST.get("action", "")
        try:
            if action == "not_assessable":
                services.mark_not_assessable(smear, request.user, request.POST.get("reason", ""))
                messages.success(request, f"“{smear.original_filename}” marked not assessable.")
            elif action == "assessable":
                services.mark_assessable(smear, request.user, request.POST.get("reason", ""))
                messages.success(request, f"“{smear.original_filename}” is assessable again and needs a review.")
            else:
                messages.error(request, "Unknown action.")
        except services.CaseLocked as exc:
            return _refuse_locked(request, exc, _review_url(smear.case))
        except services.ReviewError as exc:
            messages.error(request, f"“{smear.original_filename}”: {exc}")
        return redirect(_review_url(smear.case) + f"#smear-{smear.pk}")


class ConfirmRemainingView(RolePermissionRequiredMixin, View):
    """POST: confirm the model's label on every smear not reviewed yet (each audited)."""

    permission_required = "diagnosis.review_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        case = get_object_or_404(Case, pk=pk)
        try:
            events = services.confirm_remaining(case, request.user, expected_version=posted_case_version(request))
        except services.ReviewConflict as exc:
            messages.error(request, str(exc))
            return redirect(_review_url(case) + "#case-diagnosis")
        except services.ReviewError as exc:
            messages.error(request, str(exc))
            return redirect(case)
        n = len(events)
        left = case.smears.filter(status=Smear.Status.DONE, review_label="", not_assessable=False).count()
        if n:
            messages.success(request, f"{n} smear{'s' if n != 1 else ''} confirmed with the model's label.")
        else:
            messages.info(request, "No smear had a model label left to confirm.")
        if left:
            messages.warning(request, f"{left} smear{'s' if left != 1 else ''} still need{'s' if left == 1 else ''} "
                             "your own judgement (cells flagged by the screen, or no model suggestion to confirm).")
        return redirect(_review_url(case) + "#case-diagnosis")


class CaseGalleryView(RolePermissionRequiredMixin, DetailView):
    """All of a case's smears at a glance: thumbnails with the model's and the pathologist's labels."""

    permission_required = ("diagnosis.view_case", "diagnosis.view_smear")
    template_name = "diagnosis/case_gallery.html"
    queryset = Case.objects.with_state().select_related("patient")
    context_object_name = "case"

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            smears=self.object.smears.select_related("prediction").order_by("created_at", "pk"), **kwargs
        )


#: The version a finalize form without a valid one is taken to have shown: none (a page from before the version was
#: sent, or not the portal's form), so it is refused as stale instead of signing what nobody can say was seen.
UNKNOWN_VERSION = -1


def posted_version(request, field, *, missing):
    """The version (a smear's or the case's review_version) the posting page showed in ``field``: ASCII digits only,
    and few of them ("²".isdigit() is true but int() refuses it); ``missing`` when absent or malformed."""
    version = request.POST.get(field, "")
    return int(version) if re.fullmatch(r"[0-9]{1,9}", version) else missing


def posted_case_version(request):
    """The case's review_version the posting page showed; missing or malformed: UNKNOWN_VERSION, refused as
    stale."""
    return posted_version(request, "case_version", missing=UNKNOWN_VERSION)


class CaseFinalizeView(RolePermissionRequiredMixin, View):
    """POST final stage + comment; action=save (review_case) or
    action=sign_out (sign_out_case as well). The form sends case_version, the
    case's review_version it showed: a sign-out or draft from a page that no
    longer shows the case's reviews and draft is refused (ReviewConflict), and
    the review page is shown again as the case now is, with what was typed."""

    permission_required = "diagnosis.review_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        case = get_object_or_404(Case, pk=pk)
        stage, comment = request.POST.get("final_stage", ""), request.POST.get("comment", "").strip()
        signing = request.POST.get("action") == "sign_out"
        if signing and not request.user.has_perm("diagnosis.sign_out_case"):
            return self.handle_no_permission()
        expected = posted_case_version(request)
        try:
            if signing:
                services.sign_out(case, request.user, stage, comment, expected_version=expected)
                result = services.label_display(stage) if stage else "single-cell screening (no stage)"
                messages.success(request, f"Case {case.accession_number} signed out as {result}.")
                return redirect(case)
            services.set_final_stage(case, request.user, stage, comment, expected_version=expected)
            saved = "Final stage and comment saved" if stage else "Comment saved, final stage still open"
            messages.success(request, f"{saved} (not signed out yet).")
        except services.CaseLocked as exc:
            if comment:  # signed out or cancelled meanwhile: what was typed is not lost (it may become an addendum)
                exc = services.CaseLocked(f"{exc} Your comment was not saved: “{comment}”")
            return _refuse_locked(request, exc, case)
        except services.ReviewConflict as exc:
            messages.error(request, str(exc))
            if _wants_status(request):
                return HttpResponse(str(exc), status=409)
            messages.info(request, "The page below shows the case as it is now, with what you chose and typed kept "
                                   "in the form: check the smears and the saved draft, then submit again.")
            return _review_page_again(request, case, {"final_stage": stage, "comment": comment})
        except services.ReviewError as exc:
            messages.error(request, str(exc))
        return redirect(_review_url(case))


def _review_page_again(request, case, typed):
    """The review page as the case is now (its current version in the finalize form), with the final stage and
    comment the user had chosen and typed in that form instead of the saved draft (which it shows alongside).
    Answered to the refused POST itself with 409: nothing is kept server-side, and a reload re-sends the refused
    form, which is refused again."""
    view = CaseReviewView()
    view.setup(request, pk=case.pk)
    view.object = view.get_object()
    context = view.get_context_data(object=view.object, typed=typed)
    return view.render_to_response(context, status=409)


class AddendumView(RolePermissionRequiredMixin, View):
    permission_required = "diagnosis.sign_out_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        case = get_object_or_404(Case, pk=pk)
        try:
            services.add_addendum(case, request.user, request.POST.get("text", ""), request.POST.get("final_stage", ""),
                                  expected_version=posted_case_version(request))
            messages.success(request, "Addendum added.")
        except services.ReviewConflict as exc:
            text = request.POST.get("text", "")[:2000]
            messages.error(request, f"{exc} Your addendum was not added: “{text}”" if text else str(exc))
        except services.ReviewError as exc:
            messages.error(request, str(exc))
        return redirect(case)


def _refuse_locked(request, exc, fallback):
    """A change refused because the case is signed out: 409 for JSON clients, else the message and a redirect."""
    messages.error(request, str(exc))
    return HttpResponse(str(exc), status=409) if _wants_status(request) else redirect(fallback)


def _review_url(case):
    return reverse("diagnosis:case_review", args=[case.pk])


def _wants_status(request):
    return request.headers.get("Accept", "").startswith("application/json")


class CaseReportView(RolePermissionRequiredMixin, DetailView):
    """Printable case report (HTML with print CSS)."""

    permission_required = ("diagnosis.view_case", "diagnosis.view_smear")
    template_name = "diagnosis/case_report.html"
    queryset = Case.objects.with_state().select_related("patient", "created_by", "signed_out_by")
    context_object_name = "case"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.update(reports.report_context(self.object))
        return ctx


class CaseReportPdfView(RolePermissionRequiredMixin, View):
    permission_required = ("diagnosis.view_case", "diagnosis.view_smear")

    def get(self, request, pk):
        case = get_object_or_404(Case.objects.select_related("patient", "created_by", "signed_out_by"), pk=pk)
        pdf = reports.case_report_pdf(case)
        response = HttpResponse(pdf, content_type="application/pdf")
        # Built from the primary key and a sanitised accession by Django's own
        # helper: no typed character can break or add a header.
        filename = f"report-{case.pk}-{services.safe_name_part(case.accession_number)}.pdf"
        response["Content-Disposition"] = content_disposition_header(True, filename)
        response["Cache-Control"] = "no-store"
        return response


class DashboardView(RolePermissionRequiredMixin, TemplateView):
    permission_required = "diagnosis.view_review_dashboard"
    template_name = "diagnosis/dashboard.html"

    def get_context_data(self, **kwargs):
        by_kind = []
        reviewed = list(selectors.reviewed_smears())  # one query for both sections
        for kind, kind_display, stats in selectors.agreement_by_kind(reviewed):
            stats["matrix_display"] = [
                (selectors.model_call_display(kind, m), [(services.label_display(f), n, m == f) for f, n in zip(stats["labels"], row)])
                for m, row in stats["matrix"]
            ]
            stats["labels_display"] = [services.label_display(label) for label in stats["labels"]]
            by_kind.append({"kind": kind, "kind_display": kind_display, "stats": stats})
        return super().get_context_data(by_kind=by_kind, screen_check=selectors.screen_check(reviewed), **kwargs)


class UploadQueueView(RolePermissionRequiredMixin, TemplateView):
    """The technician's recent uploads with live status, and their rejected files."""

    permission_required = "diagnosis.add_smear"
    template_name = "diagnosis/upload_queue.html"
    LIMIT = 50

    def get_context_data(self, **kwargs):
        user = self.request.user
        smears = (
            Smear.objects.filter(uploaded_by=user)
            .select_related("prediction", "case", "case__patient")
            .order_by("-created_at", "-pk")[: self.LIMIT]
        )
        rejected = RejectedUpload.objects.filter(uploaded_by=user).select_related("case")[: self.LIMIT]
        batches = notifications.batch_progress(Smear.objects.filter(uploaded_by=user))[:10]
        return super().get_context_data(smears=smears, rejected=rejected, batches=batches, **kwargs)


class UploadQueueStatusView(RolePermissionRequiredMixin, View):
    """JSON for the upload queue page, in the shape case_status.js reads."""

    permission_required = "diagnosis.add_smear"

    def get(self, request):
        ids = Smear.objects.filter(uploaded_by=request.user).order_by("-created_at", "-pk").values_list("pk", flat=True)
        payload = services.smears_status_payload(
            Smear.objects.filter(pk__in=list(ids[: UploadQueueView.LIMIT])), request.user
        )
        payload["batches"] = [
            {k: v for k, v in row.items() if k not in ("started", "uploader")}
            for row in notifications.batch_progress(Smear.objects.filter(uploaded_by=request.user))[:10]
        ]
        response = JsonResponse(payload)
        response["Cache-Control"] = "no-store"
        return response


class RoleRequiredMixin(RolePermissionRequiredMixin):
    """Any portal role may open the page (its content is the user's own)."""

    def has_permission(self):
        from accounts.roles import has_role

        return has_role(self.request.user)


class NotificationListView(RoleRequiredMixin, TemplateView):
    """The signed-in user's notifications, newest first (unread highlighted)."""

    template_name = "diagnosis/notifications.html"
    LIMIT = 100

    def get_context_data(self, **kwargs):
        items = Notification.objects.filter(recipient=self.request.user).select_related("case")[: self.LIMIT]
        return super().get_context_data(notifications=items, **kwargs)


class NotificationsReadView(RoleRequiredMixin, View):
    """POST: mark all of the user's notifications read."""

    http_method_names = ["post"]

    def post(self, request):
        from django.utils import timezone

        n = Notification.objects.filter(recipient=request.user, read_at=None).update(read_at=timezone.now())
        messages.success(request, f"{n} notification{'s' if n != 1 else ''} marked as read.")
        return redirect("diagnosis:notifications")
