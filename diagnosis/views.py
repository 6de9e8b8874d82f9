import logging
from pathlib import PurePath

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views import View
from django.views.generic import CreateView, DetailView, FormView, ListView
from django.views.generic.detail import SingleObjectMixin

from accounts.mixins import RolePermissionRequiredMixin
from accounts.roles import has_role

from . import selectors, services
from .forms import CaseFilterForm, CaseForm, PatientForm, SmearUploadForm
from .models import IMAGE_FORMAT_FILES, Case, Patient, Smear, Stage

logger = logging.getLogger(__name__)


@login_required
def home(request):
    if not has_role(request.user):
        return redirect("pending_role")
    return redirect("diagnosis:case_list")


class CaseListView(RolePermissionRequiredMixin, ListView):
    permission_required = "diagnosis.view_case"
    template_name = "diagnosis/case_list.html"
    paginate_by = 25

    def get_queryset(self):
        self.filter_form = CaseFilterForm(self.request.GET or None)
        qs = Case.objects.with_state().select_related("patient", "created_by")
        return self.filter_form.filter(qs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["filter_form"] = self.filter_form
        query = self.request.GET.copy()
        query.pop("page", None)
        ctx["query_string"] = query.urlencode()
        return ctx


class CaseDetailView(RolePermissionRequiredMixin, DetailView):
    permission_required = "diagnosis.view_case"
    template_name = "diagnosis/case_detail.html"
    queryset = Case.objects.with_state().select_related("patient", "created_by", "signed_out_by")

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["smears"] = self.object.smears.select_related("prediction", "uploaded_by", "reviewed_by")
        ctx["counts"] = self.object.smear_counts()
        user = self.request.user
        if user.has_perm("diagnosis.view_auditevent"):
            ctx["audit_events"] = self.object.audit_events.select_related("actor", "smear__prediction")
        if user.has_perm("diagnosis.view_rejectedupload"):
            ctx["rejected_uploads"] = self.object.rejected_uploads.select_related("uploaded_by")
        ctx["addenda"] = self.object.addenda.select_related("author")
        ctx["final_labels"] = [(label, services.label_display(label)) for label in services.labels_for_case(self.object)]
        ctx["screening"] = self.object.screening_summary()
        ctx["has_fields"] = self.object.has_field_smears()
        ctx["also_in"] = selectors.images_in_other_patients_cases(self.object)
        ctx["can_cancel"] = user.has_perm("diagnosis.add_case") and services.cancellable(self.object)
        ctx["cancel_reason_max"] = services.CANCEL_REASON_MAX_LENGTH
        if self.object.is_signed_out and user.has_perm("diagnosis.review_case"):
            ctx["next_case"] = services.next_case_in_queue(after=self.object)
        ctx["stage_labels"] = Stage.choices
        return ctx


class CaseStatusView(RolePermissionRequiredMixin, SingleObjectMixin, View):
    """JSON polled by the case page while smears are classified."""

    permission_required = "diagnosis.view_case"
    model = Case

    def get(self, request, *args, **kwargs):
        response = JsonResponse(services.case_status_payload(self.get_object(), request.user))
        response["Cache-Control"] = "no-store"
        return response


class CaseCreateView(RolePermissionRequiredMixin, CreateView):
    permission_required = "diagnosis.add_case"
    form_class = CaseForm
    template_name = "diagnosis/case_form.html"

    def get_initial(self):
        initial = super().get_initial()
        if self.request.GET.get("patient", "").isdigit():
            initial["patient"] = self.request.GET["patient"]
        return initial

    def form_valid(self, form):
        form.instance.created_by = self.request.user
        with transaction.atomic():  # the case and the first entry of its audit trail together
            response = save_or_report_duplicate(super().form_valid, form, "accession_number")
            if response is not None:
                services.record_case_opened(self.object, self.request.user)
        if response is None:
            return self.form_invalid(form)
        messages.success(self.request, f"Case {form.instance.accession_number} created. Now upload its smears.")
        return response

    def get_success_url(self):
        return reverse("diagnosis:smear_upload", args=[self.object.pk])


class SmearUploadView(RolePermissionRequiredMixin, SingleObjectMixin, FormView):
    permission_required = "diagnosis.add_smear"
    form_class = SmearUploadForm
    template_name = "diagnosis/smear_upload.html"
    model = Case

    def get(self, request, *args, **kwargs):
        self.object = self.get_object()
        try:
            services.check_takes_smears(self.object)  # said before files are chosen, not after they were sent
        except services.CaseLocked as refusal:
            messages.error(request, str(refusal))
            return redirect(self.object)
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        self.object = self.get_object()
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        try:
            outcome = services.add_smears(
                self.object, form.cleaned_data["images"], self.request.user, kind=form.cleaned_data["kind"]
            )
        except services.CaseLocked as exc:
            messages.error(self.request, str(exc))
            return redirect(self.object)
        except services.StorageFailed as exc:  # nothing kept: the form again, with the reason
            form.add_error(None, str(exc))
            return self.form_invalid(form)
        for name, reason in outcome.rejected:
            messages.error(self.request, f"“{name}” was not accepted: {reason}")
        if not outcome.accepted:
            form.add_error("images", "None of the files was accepted; see the reasons above.")
            return self.form_invalid(form)
        n = len(outcome.accepted)
        messages.success(self.request, f"{n} image{'s' if n != 1 else ''} stored and queued for classification.")
        for name, warning in outcome.elsewhere:  # kept, but possibly the wrong patient's image
            messages.warning(self.request, f"“{name}”: {warning}")
        return redirect(self.object)


class CaseCancelView(RolePermissionRequiredMixin, View):
    """POST: cancel a case opened by mistake, with the reason (services.cancel_case: only while no image is kept)."""

    permission_required = "diagnosis.add_case"
    http_method_names = ["post"]

    def post(self, request, pk):
        case = get_object_or_404(Case, pk=pk)
        try:
            services.cancel_case(case, request.user, request.POST.get("reason", ""))
        except services.ReviewError as exc:  # CaseLocked included
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Case {case.accession_number} cancelled.")
        return redirect(case)


class SmearRetryView(RolePermissionRequiredMixin, View):
    permission_required = "diagnosis.retry_smear"
    http_method_names = ["post"]

    def post(self, request, pk):
        smear = get_object_or_404(Smear.objects.select_related("case"), pk=pk)
        try:
            retried = services.retry_smear(smear, request.user)
        except services.CaseLocked as exc:
            messages.error(request, str(exc))
            return redirect(smear.case)
        if retried:
            messages.success(request, f"“{smear.original_filename}” queued again.")
        elif smear.not_assessable:
            messages.warning(request, f"“{smear.original_filename}” is marked not assessable; mark it assessable "
                             "before retrying it.")
        else:
            messages.warning(request, f"“{smear.original_filename}” is not failed; nothing to retry.")
        from django.utils.http import url_has_allowed_host_and_scheme

        # Back to the page that sent the form (the upload queue): a path on this site only, redirected to as
        # it is; never resolved as a URL pattern name, which redirect() would try (a server error for "x").
        next_url = request.POST.get("next", "")
        if next_url.startswith("/") and url_has_allowed_host_and_scheme(next_url, {request.get_host()},
                                                                         request.is_secure()):
            return HttpResponseRedirect(next_url)
        return redirect(smear.case)


class SmearFileView(RolePermissionRequiredMixin, View):
    """Serves a smear image or its thumbnail to users allowed to see smears.
    Media files are never served publicly.

    The content type comes from the format detected at upload (thumbnails and
    heat maps are always JPEG), never from a file name, and the response
    forbids sniffing and any active content: an image that is also HTML or
    script (a polyglot) is only ever shown as an image.

    The smear image itself is shown in the browser as the model reads it
    (services.displayed_image): its stored bytes where a browser shows the
    same pixels, otherwise its kept PNG rendition (made by the worker, or now
    for a smear stored before it did; 404 when the stored file no longer
    decodes). ``?original=1`` downloads the stored
    file untouched, whatever its format, and the case's audit trail records
    who downloaded it."""

    permission_required = "diagnosis.view_smear"
    field = "image"

    def get(self, request, pk):
        smear = get_object_or_404(Smear.objects.select_related("prediction"), pk=pk)
        if self.field == "heatmap":  # shown only where the prediction is a suggestion (inside the domain)
            file = smear.prediction.heatmap if hasattr(smear, "prediction") and smear.prediction.in_domain else None
        else:
            file = getattr(smear, self.field)
        if not file:
            raise Http404("No such file.")
        if self.field != "image":
            return private_file_response(file, filename=f"{self.field}-{smear.pk}.jpg", content_type="image/jpeg")
        stem = services.safe_name_part(PurePath(smear.original_filename).stem)  # the typed name, made safe
        if request.GET.get("original") == "1":
            extension, content_type = IMAGE_FORMAT_FILES.get(smear.image_format, (".img", "application/octet-stream"))
            response = private_file_response(file, filename=f"{stem}{extension}", content_type=content_type,
                                             as_attachment=True)  # 404 before anything is recorded if it is lost
            if request.method == "GET":  # a HEAD request (Django answers it with get) takes no bytes away
                services.record_original_download(smear, request.user)
            return response
        try:
            shown = services.displayed_image(smear)
        except services.NotDisplayable as exc:
            raise Http404(str(exc)) from None
        return private_file_response(shown.file, filename=f"{stem}{shown.extension}", content_type=shown.content_type)


def private_file_response(file, *, filename, content_type, as_attachment=False):
    """A stored file (smear, heat map, export zip) for a user the view has
    already let in: the type given by the caller, never from a name, no
    caching, no sniffing, no active content; 404 when storage lost it."""
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    response = FileResponse(handle, as_attachment=as_attachment, filename=filename, content_type=content_type)
    response["Cache-Control"] = "no-store, private"  # patient data: no copy in browser or proxy caches
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


class PatientListView(RolePermissionRequiredMixin, ListView):
    permission_required = "diagnosis.view_patient"
    template_name = "diagnosis/patient_list.html"
    paginate_by = 25

    def get_queryset(self):
        from django.db.models import Count, Max

        qs = Patient.objects.annotate(n_cases=Count("cases"), last_case=Max("cases__created_at")).order_by("lab_id")
        self.q = self.request.GET.get("q", "").strip()[:100]  # identifiers are at most 64 characters
        if self.q:
            qs = qs.filter(lab_id__icontains=self.q)
        return qs

    def get_context_data(self, **kwargs):
        from urllib.parse import urlencode

        return super().get_context_data(q=self.q, query_string=urlencode({"q": self.q}) if self.q else "", **kwargs)


class PatientDetailView(RolePermissionRequiredMixin, DetailView):
    permission_required = ("diagnosis.view_patient", "diagnosis.view_case")
    template_name = "diagnosis/patient_detail.html"
    model = Patient

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["cases"] = self.object.cases.with_state().select_related("created_by").order_by("created_at", "pk")
        return ctx


class PatientCreateView(RolePermissionRequiredMixin, CreateView):
    permission_required = "diagnosis.add_patient"
    form_class = PatientForm
    template_name = "diagnosis/patient_form.html"

    def form_valid(self, form):
        form.instance.created_by = self.request.user
        response = save_or_report_duplicate(super().form_valid, form, "lab_id")
        if response is None:
            return self.form_invalid(form)
        messages.success(self.request, f"Patient {form.instance.lab_id} created.")
        return response


def save_or_report_duplicate(save, form, field):
    """Run the view's save; when the database refuses a duplicate identifier
    (a colleague saved the same one a moment after the form's own check),
    put the error on the form and return None instead of failing."""
    from django.db import IntegrityError, transaction

    try:
        with transaction.atomic():
            return save(form)
    except IntegrityError:
        form.add_error(field, "This identifier already exists (identifiers ignore letter case and surrounding spaces).")
        return None
