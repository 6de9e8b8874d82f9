from crispy_forms.helper import FormHelper
from crispy_forms.layout import Submit
from django import forms
from django.conf import settings

from django.utils import timezone

from .models import Case, CaseState, Patient, Smear, Stage
from .services import ALLOWED_FORMATS, one_char_line_breaks, without_control_characters


class TextareaCharField(forms.CharField):
    """A bounded text box's field: line breaks become LF before max_length is
    checked, as in services.check_length, so the limit the page shows is the
    limit applied (services.one_char_line_breaks), and control characters go
    (services.without_control_characters: an escape sequence or a NUL shows
    as nothing, or breaks a PDF)."""

    widget = forms.Textarea

    def to_python(self, value):
        if isinstance(value, str):
            value = without_control_characters(one_char_line_breaks(value))
        return super().to_python(value)


#: The earliest birth year and collection date the portal takes (as the birth year's model validator).
EARLIEST_YEAR = 1900


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ["lab_id", "sex", "birth_year"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The browser's own check says what the server says (a positive integer field would allow 0).
        self.fields["birth_year"].widget.attrs.update(min=EARLIEST_YEAR, max=timezone.localdate().year)
        self.helper = FormHelper()
        self.helper.add_input(Submit("submit", "Create patient"))


class CaseForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["patient", "accession_number", "specimen_type", "collection_date", "clinical_note"]
        field_classes = {"clinical_note": TextareaCharField}
        widgets = {
            "clinical_note": forms.Textarea(attrs={"rows": 4}),
            "collection_date": forms.DateInput(attrs={"type": "date", "min": f"{EARLIEST_YEAR}-01-01"},
                                               format="%Y-%m-%d"),
        }

    def clean_collection_date(self):
        value = self.cleaned_data.get("collection_date")
        if value and value > timezone.localdate():
            raise forms.ValidationError("The collection date cannot be in the future.")
        patient = self.cleaned_data.get("patient")  # cleaned before: it comes first in the form
        if value and patient is not None and patient.birth_year and value.year < patient.birth_year:
            raise forms.ValidationError(f"The collection date is before the patient's birth year ({patient.birth_year}).")
        if value and value.year < EARLIEST_YEAR:
            raise forms.ValidationError(f"The collection date cannot be before {EARLIEST_YEAR}.")
        return value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.add_input(Submit("submit", "Create case"))


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field that accepts several files. Each file is validated later,
    one by one, so that a bad file never blocks the good ones."""

    widget = MultipleFileInput

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else [data]
        files = [f for f in files if f]
        if not files:
            raise forms.ValidationError("Choose at least one image file.", code="required")
        if len(files) > settings.SMEAR_MAX_FILES_PER_UPLOAD:
            raise forms.ValidationError(
                f"At most {settings.SMEAR_MAX_FILES_PER_UPLOAD} files can be uploaded at once.", code="too_many"
            )
        return files


class SmearUploadForm(forms.Form):
    kind = forms.ChoiceField(
        label="What the images are",
        choices=Smear.Kind.choices,
        widget=forms.RadioSelect,
        help_text="One kind per upload: blood-smear fields are staged; single segmented white cells are "
        "screened for leukaemic blasts.",
    )
    images = MultipleFileField(
        label="Smear images",
        widget=MultipleFileInput(attrs={"accept": ".jpg,.jpeg,.png,.tif,.tiff,.bmp,image/*"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mb = settings.SMEAR_MAX_UPLOAD_BYTES / (1024 * 1024)
        self.fields["images"].help_text = (
            f"One or more images of the kind chosen above ({', '.join(ALLOWED_FORMATS.values())}); "
            f"up to {mb:g} MB and {settings.SMEAR_MAX_PIXELS / 1e6:g} megapixels each, at least "
            f"{settings.SMEAR_MIN_SIDE_PX} pixels on each side and at most {settings.SMEAR_MAX_ASPECT_RATIO:g}:1, "
            f"{settings.SMEAR_MAX_FILES_PER_UPLOAD} files per upload."
        )
        self.helper = FormHelper()
        self.helper.add_input(Submit("submit", "Upload and classify"))


class CaseFilterForm(forms.Form):
    q = forms.CharField(label="Patient or accession", required=False, max_length=100)
    state = forms.ChoiceField(label="State", choices=[("", "Any state")] + list(CaseState.choices), required=False)
    final = forms.ChoiceField(
        label="Final stage", choices=[("", "Any final stage")] + list(Stage.choices), required=False
    )
    status = forms.ChoiceField(choices=[("", "Any status")] + list(Case.Status.choices), required=False)
    stage = forms.ChoiceField(choices=[("", "Any suggested stage")] + list(Stage.choices), required=False)
    created_from = forms.DateField(label="Opened from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    created_to = forms.DateField(label="Opened until", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    patient = forms.ModelChoiceField(queryset=Patient.objects.all(), required=False, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and start > end:
            raise forms.ValidationError("“Opened from” is after “Opened until”.")
        return data

    def filter(self, queryset):
        """The cases matching the valid filters (invalid ones are shown as
        errors on the form and ignored, never a server error)."""
        if not self.is_bound:
            return queryset
        self.is_valid()
        data = self.cleaned_data
        if data.get("q"):
            from .selectors import search_filter

            queryset = queryset.filter(search_filter(data["q"].strip()))
        if data.get("state"):
            queryset = queryset.filter(workflow_state=data["state"])
        if data.get("final"):
            queryset = queryset.filter(final_stage=data["final"])
        if data.get("status"):
            queryset = queryset.filter(status=data["status"])
        if data.get("stage"):
            queryset = queryset.filter(suggested_stage=data["stage"])
        if data.get("created_from") and "__all__" not in self.errors:
            queryset = queryset.filter(created_at__date__gte=data["created_from"])
        if data.get("created_to") and "__all__" not in self.errors:
            queryset = queryset.filter(created_at__date__lte=data["created_to"])
        if data.get("patient"):
            queryset = queryset.filter(patient=data["patient"])
        return queryset
