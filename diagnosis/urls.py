from django.urls import path

from . import card_views, export_views, review_views, views

app_name = "diagnosis"

urlpatterns = [
    path("cases/", views.CaseListView.as_view(), name="case_list"),
    path("cases/new/", views.CaseCreateView.as_view(), name="case_create"),
    path("cases/<int:pk>/", views.CaseDetailView.as_view(), name="case_detail"),
    path("cases/<int:pk>/status.json", views.CaseStatusView.as_view(), name="case_status"),
    path("cases/<int:pk>/upload/", views.SmearUploadView.as_view(), name="smear_upload"),
    path("cases/<int:pk>/cancel/", views.CaseCancelView.as_view(), name="case_cancel"),
    path("smears/<int:pk>/retry/", views.SmearRetryView.as_view(), name="smear_retry"),
    path("smears/<int:pk>/image/", views.SmearFileView.as_view(field="image"), name="smear_image"),
    path("smears/<int:pk>/thumbnail/", views.SmearFileView.as_view(field="thumbnail"), name="smear_thumbnail"),
    path("smears/<int:pk>/heatmap/", views.SmearFileView.as_view(field="heatmap"), name="smear_heatmap"),
    path("smears/<int:pk>/review/", review_views.SmearReviewView.as_view(), name="smear_review"),
    path("smears/<int:pk>/assessable/", review_views.SmearAssessabilityView.as_view(), name="smear_assessable"),
    path("review/", review_views.ReviewQueueView.as_view(), name="review_queue"),
    path("review/dashboard/", review_views.DashboardView.as_view(), name="dashboard"),
    path("review/exports/", export_views.ExportListView.as_view(), name="exports"),
    path("review/exports/<int:pk>/download/", export_views.ExportDownloadView.as_view(), name="export_download"),
    path("cases/<int:pk>/review/", review_views.CaseReviewView.as_view(), name="case_review"),
    path("cases/<int:pk>/confirm-remaining/", review_views.ConfirmRemainingView.as_view(), name="case_confirm_remaining"),
    path("cases/<int:pk>/gallery/", review_views.CaseGalleryView.as_view(), name="case_gallery"),
    path("cases/<int:pk>/finalize/", review_views.CaseFinalizeView.as_view(), name="case_finalize"),
    path("cases/<int:pk>/addendum/", review_views.AddendumView.as_view(), name="case_addendum"),
    path("cases/<int:pk>/report/", review_views.CaseReportView.as_view(), name="case_report"),
    path("cases/<int:pk>/report.pdf", review_views.CaseReportPdfView.as_view(), name="case_report_pdf"),
    path("uploads/", review_views.UploadQueueView.as_view(), name="upload_queue"),
    path("uploads/status.json", review_views.UploadQueueStatusView.as_view(), name="upload_queue_status"),
    path("notifications/", review_views.NotificationListView.as_view(), name="notifications"),
    path("notifications/read/", review_views.NotificationsReadView.as_view(), name="notifications_read"),
    path("models/", card_views.ModelCardListView.as_view(), name="model_cards"),
    path("models/<slug:name>/", card_views.ModelCardView.as_view(), name="model_card"),
    path("models/<slug:name>/figures/<int:index>.png", card_views.ModelCardFigureView.as_view(),
         name="model_card_figure"),
    path("patients/", views.PatientListView.as_view(), name="patient_list"),
    path("patients/new/", views.PatientCreateView.as_view(), name="patient_create"),
    path("patients/<int:pk>/", views.PatientDetailView.as_view(), name="patient_detail"),
]
