from django import forms
from django.contrib import admin, messages

from leukportal.admin import BoundedSearchMixin

from . import services
from .forms import CaseForm
from .formatting import format_when, signer_name
from .models import (
    AuditEvent, Case, CaseAddendum, CaseState, ExportDownload, Patient, Prediction, RejectedUpload, ReviewedExport,
    Smear,
)


class CaseStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return CaseState.choices

    def queryset(self, request, queryset):
        return queryset.filter(workflow_state=self.value()) if self.value() else queryset


class SignedOutFilter(admin.SimpleListFilter):
    title = "signed out"
    parameter_name = "signed_out"

    def lookups(self, request, model_admin):
        return [("yes", "Signed out"), ("no", "Not signed out")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(signed_out_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(signed_out_at__isnull=True)
        return queryset


class FinalStageFilter(admin.SimpleListFilter):
    """The final stages cases have, by their names; no final stage (not reviewed yet, or cells only) is "None".
    Django's filter of a field's values linked an empty value with an empty text: a link nobody could name."""

    title = "final stage"
    parameter_name = "final_stage"
    NONE = "none"

    def lookups(self, request, model_admin):
        stages = model_admin.get_queryset(request).order_by().values_list("final_stage", flat=True).distinct()
        return [(stage or self.NONE, services.label_display(stage) if stage else "None")
                for stage in sorted(stages, key=lambda s: (s != "", s))]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(final_stage="" if self.value() == self.NONE else self.value())


class ReadOnlyInline(admin.TabularInline):
    """Related rows listed with links to their own pages; nothing is added or deleted from here."""

    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class ListsRelatedRows:
    """A ModelAdmin whose inlines (ReadOnlyInline) list what the object already has: none on its add form, where
    they would be an empty table with empty header cells."""

    def get_inlines(self, request, obj):
        return super().get_inlines(request, obj) if obj is not None else []


class CaseInline(ReadOnlyInline):
    model = Case
    fields = ["accession_number", "status", "suggested_stage", "final_stage", "signed_out_at", "created_at"]
    readonly_fields = fields


@admin.register(Patient)
class PatientAdmin(ListsRelatedRows, BoundedSearchMixin, admin.ModelAdmin):
    list_display = ["lab_id", "sex", "birth_year", "created_at", "created_by"]
    list_select_related = ["created_by"]  # nullable: the admin's own select_related() would leave it out
    list_filter = ["sex", "created_at"]
    search_fields = ["lab_id"]
    readonly_fields = ["created_at", "created_by"]
    inlines = [CaseInline]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            return super().save_model(request, obj, form, change)
        # Through the service: every changed field lands in the audit trail of
        # the patient's cases with before and after.
        changes = {f: getattr(obj, f) for f in form.changed_data if f in services.PATIENT_EDITABLE_FIELDS}
        services.update_patient(Patient.objects.get(pk=obj.pk), request.user, **changes)


class SmearInline(ReadOnlyInline):
    model = Smear
    fields = ["original_filename", "kind", "status", "attempts", "error", "created_at"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("case")  # each row is named with its case


class CaseAdminForm(forms.ModelForm):
    """The admin's case form checks what the portal's case form checks."""

    clean_collection_date = CaseForm.clean_collection_date

    class Meta:
        model = Case
        fields = "__all__"
        field_classes = CaseForm.Meta.field_classes


@admin.register(Case)
class CaseAdmin(ListsRelatedRows, BoundedSearchMixin, admin.ModelAdmin):
    form = CaseAdminForm
    list_display = [
        "accession_number", "patient", "state", "final_stage_display", "signed_out", "status", "suggested_stage",
        "confidence", "created_by", "created_at",
    ]
    list_filter = [CaseStateFilter, SignedOutFilter, FinalStageFilter, "status", "suggested_stage", "created_at"]
    search_fields = ["accession_number", "patient__lab_id", "clinical_note"]
    list_select_related = ["patient", "created_by", "signed_out_by"]
    autocomplete_fields = ["patient"]
    # Stages by their names and the confidence rounded, as the portal shows them; the raw columns are not in the form.
    SHOWN_AS = {"final_stage": "final_stage_display", "suggested_confidence": "confidence",
                "signed_out_stage": "signed_out_stage_display"}
    exclude = list(SHOWN_AS)
    readonly_fields = [
        "status", "suggested_stage", "confidence", "created_by", "created_at", "updated_at",
        # The review changes only through the portal's review screen (audited).
        "final_stage_display", "review_comment", "signed_out_by", "signed_out_at", "signed_out_stage_display",
        # Copied at sign-out (what the signed report shows).
        "signed_out_by_name", "signed_out_by_email", "signed_out_patient_lab_id", "signed_out_patient_sex",
        "signed_out_patient_birth_year",
        # Cancelled only in the portal (services.cancel_case, audited).
        "cancelled_at", "cancelled_by", "cancel_reason",
    ]
    inlines = [SmearInline]
    actions = ["export_reviewed"]

    def get_queryset(self, request):
        return super().get_queryset(request).with_state()

    @admin.display(description="state", ordering="workflow_state")
    def state(self, obj):
        return obj.state_display

    @admin.display(description="final stage", ordering="final_stage")
    def final_stage_display(self, obj):
        return services.label_display(obj.final_stage) if obj.final_stage else "–"

    @admin.display(description="stage signed out")
    def signed_out_stage_display(self, obj):
        return services.label_display(obj.signed_out_stage) if obj.signed_out_stage else "–"

    @admin.display(description="signed out", ordering="signed_out_at")
    def signed_out(self, obj):
        return f"{format_when(obj.signed_out_at)} by {signer_name(obj)}" if obj.is_signed_out else "–"

    @admin.display(description="suggestion confidence", ordering="suggested_confidence")
    def confidence(self, obj):
        return "–" if obj.suggested_confidence is None else f"{obj.suggested_confidence:.2f}"

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and (obj.is_signed_out or obj.is_cancelled):  # locked: addenda in the portal, or none
            return [self.SHOWN_AS.get(f.name, f.name) for f in self.model._meta.fields]
        return super().get_readonly_fields(request, obj)

    @admin.action(description="Export reviewed smears of the selected signed-out cases (zip)",
                  permissions=["export_reviewed"])
    def export_reviewed(self, request, queryset):
        from .reports import export_zip_response

        cases = list(queryset.order_by("accession_number"))
        return export_zip_response(services.reviewed_smears().filter(case__in=cases), request.user, cases)

    def has_export_reviewed_permission(self, request):
        return request.user.has_perm("diagnosis.export_reviewed")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            super().save_model(request, obj, form, change)
            services.record_case_opened(obj, request.user)  # the admin's add view runs in one transaction
            return
        # Through the service: audited with before/after, refused after sign-out.
        changes = {f: getattr(obj, f) for f in form.changed_data if f in services.CASE_EDITABLE_FIELDS}
        services.update_case(Case.objects.get(pk=obj.pk), request.user, **changes)

    def has_change_permission(self, request, obj=None):
        # A signed-out case is changed only by an addendum in the portal; a cancelled one not at all.
        if obj is not None and (obj.is_signed_out or obj.is_cancelled):
            return False
        return super().has_change_permission(request, obj)


@admin.register(Smear)
class SmearAdmin(BoundedSearchMixin, admin.ModelAdmin):
    list_display = ["original_filename", "case", "kind", "status", "attempts", "width", "height", "uploaded_by", "created_at"]
    list_filter = ["kind", "status", "image_format", "created_at"]
    search_fields = ["original_filename", "sha256", "case__accession_number", "case__patient__lab_id"]
    list_select_related = ["case", "uploaded_by"]
    actions = ["retry_failed"]

    # Smears are created by the upload page (validation, hashing, queueing) and
    # changed only by the workflow; the admin shows them.
    def get_readonly_fields(self, request, obj=None):
        # Every field, the not-assessable mark and review version included: those change a case's counts and
        # its signed summary, so they change only through the portal's audited review services.
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Retry the selected failed smears", permissions=["retry"])
    def retry_failed(self, request, queryset):
        n, locked = 0, 0
        for smear in queryset.filter(status=Smear.Status.FAILED).select_related("case"):
            try:
                n += services.retry_smear(smear, request.user)
            except services.CaseLocked:
                locked += 1
        self.message_user(request, f"{n} smear(s) queued again.", messages.SUCCESS)
        if locked:
            self.message_user(request, f"{locked} smear(s) left as they are: their case is signed out.", messages.WARNING)

    def has_retry_permission(self, request):
        return request.user.has_perm("diagnosis.retry_smear")


@admin.register(Prediction)
class PredictionAdmin(BoundedSearchMixin, admin.ModelAdmin):
    """Model output is a record: read-only here."""

    list_display = ["smear", "task", "label", "probabilities_text", "threshold_text", "model_name", "model_version", "latency_ms", "created_at"]
    list_filter = ["task", "label", "model_name", "model_version", "created_at"]
    search_fields = ["smear__original_filename", "smear__case__accession_number", "smear__case__patient__lab_id"]
    list_select_related = ["smear__case"]

    @admin.display(description="probabilities")
    def probabilities_text(self, obj):
        return ", ".join(f"{services.label_display(label)} {p:.2f}" for label, p in obj.ordered_probabilities())

    @admin.display(description="threshold", ordering="threshold")
    def threshold_text(self, obj):
        return "–" if obj.threshold is None else f"{obj.threshold:.2f}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(BoundedSearchMixin, admin.ModelAdmin):
    """Records: visible in the admin, never added, changed or deleted there."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "case", "action", "actor", "smear", "old_value", "new_value", "model_version", "reason"]
    list_filter = ["action", "created_at"]
    search_fields = ["case__accession_number", "actor__email", "reason", "detail", "model_version"]
    list_select_related = ["case", "actor", "smear__case"]  # a smear is named with its case
    actions = None


@admin.register(CaseAddendum)
class CaseAddendumAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "case", "author", "previous_final_stage", "new_final_stage", "text"]
    search_fields = ["case__accession_number", "text"]
    list_select_related = ["case", "author"]
    actions = None


@admin.register(RejectedUpload)
class RejectedUploadAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "filename", "reason", "case", "uploaded_by"]
    list_filter = ["created_at"]
    search_fields = ["filename", "reason", "case__accession_number", "uploaded_by__email"]
    list_select_related = ["case", "uploaded_by"]
    actions = None


@admin.register(ReviewedExport)
class ReviewedExportAdmin(ReadOnlyAdmin):
    """Who took which reviewed images out of the portal, and when (downloads: Review, Exports)."""

    list_display = ["requested_at", "requested_by", "status", "image_count", "size_bytes", "finished_at", "error"]
    list_filter = ["status", "requested_at"]
    list_select_related = ["requested_by"]
    exclude = ["file"]  # the zip is downloaded through the portal's permission check, not an admin link
    actions = None


@admin.register(ExportDownload)
class ExportDownloadAdmin(ReadOnlyAdmin):
    """Each time reviewed images left the portal as a zip, and who took them."""

    list_display = ["downloaded_at", "downloaded_by", "via", "image_count", "export", "cases"]
    list_filter = ["via", "downloaded_at"]
    list_select_related = ["downloaded_by", "export"]
    search_fields = ["downloaded_by__email", "cases"]
    actions = None
