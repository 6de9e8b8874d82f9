from crispy_forms.helper import FormHelper
from crispy_forms.layout import Submit
from django import forms
from django.conf import settings

from .models import Case, Patient, Smear, Stage
from .services import ALLOWED_FORMATS


class PatientForm(forms.ModelForm):
    class Meta:
        model = Patient
        fields = ["lab_id", "sex", "birth_year"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.add_input(Submit("submit", "Create patient"))


class CaseForm(forms.ModelForm):
    class Meta:
        model = Case
        fields = ["patient", "accession_number", "clinical_note"]
        widgets = {"clinical_note": forms.Textarea(attrs={"rows": 4})}

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
    q = forms.CharField(label="Patient or accession", required=False)
    status = forms.ChoiceField(choices=[("", "Any status")] + list(Case.Status.choices), required=False)
    stage = forms.ChoiceField(choices=[("", "Any suggested stage")] + list(Stage.choices), required=False)
    patient = forms.ModelChoiceField(queryset=Patient.objects.all(), required=False, widget=forms.HiddenInput)

    def filter(self, queryset):
        if not self.is_valid():
            return queryset
        data = self.cleaned_data
        if data["q"]:
            from .services import search_filter

            queryset = queryset.filter(search_filter(data["q"]))
        if data["status"]:
            queryset = queryset.filter(status=data["status"])
        if data["stage"]:
            queryset = queryset.filter(suggested_stage=data["stage"])
        if data["patient"]:
            queryset = queryset.filter(patient=data["patient"])
        return queryset
