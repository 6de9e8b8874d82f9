from django.urls import path

from . import views

app_name = "diagnosis"

urlpatterns = [
    path("cases/", views.CaseListView.as_view(), name="case_list"),
    path("cases/new/", views.CaseCreateView.as_view(), name="case_create"),
    path("cases/<int:pk>/", views.CaseDetailView.as_view(), name="case_detail"),
    path("cases/<int:pk>/status.json", views.CaseStatusView.as_view(), name="case_status"),
    path("cases/<int:pk>/upload/", views.SmearUploadView.as_view(), name="smear_upload"),
    path("smears/<int:pk>/retry/", views.SmearRetryView.as_view(), name="smear_retry"),
    path("smears/<int:pk>/image/", views.SmearFileView.as_view(field="image"), name="smear_image"),
    path("smears/<int:pk>/thumbnail/", views.SmearFileView.as_view(field="thumbnail"), name="smear_thumbnail"),
    path("patients/", views.PatientListView.as_view(), name="patient_list"),
    path("patients/new/", views.PatientCreateView.as_view(), name="patient_create"),
    path("patients/<int:pk>/", views.PatientDetailView.as_view(), name="patient_detail"),
]
