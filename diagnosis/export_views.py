"""The reviewed-smear export in the portal: ask for one, see it being built
by a worker, download the zip. Rules live in services/export.py."""
from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import ListView

from accounts.mixins import RolePermissionRequiredMixin

from . import services
from .models import ReviewedExport
from .views import private_file_response


class ExportListView(RolePermissionRequiredMixin, ListView):
    """GET: the exports asked for so far (newest first); POST: ask for a new one."""

    permission_required = "diagnosis.export_reviewed"
    template_name = "diagnosis/exports.html"
    context_object_name = "exports"
    paginate_by = 20
    queryset = ReviewedExport.objects.select_related("requested_by").prefetch_related("downloads__downloaded_by")

    def get_context_data(self, **kwargs):
        from django.conf import settings

        ctx = super().get_context_data(**kwargs)
        ctx["pending"] = ReviewedExport.objects.filter(status__in=ReviewedExport.PENDING).exists()
        ctx["keep_days"] = settings.EXPORT_KEEP_DAYS
        return ctx

    def post(self, request):
        export, created = services.request_export(request.user)
        if created:
            messages.success(request, "Export asked for: a worker is zipping the reviewed smears. "
                                      "This page shows when it is ready.")
        else:
            messages.info(request, "An export is already being built; it is shown below.")
        return redirect("diagnosis:exports")


class ExportDownloadView(RolePermissionRequiredMixin, View):
    permission_required = "diagnosis.export_reviewed"

    def get(self, request, pk):
        export = get_object_or_404(ReviewedExport, pk=pk, status=ReviewedExport.Status.READY)
        if not export.file:
            raise Http404("No such file.")
        services.record_download(request.user, export=export, image_count=export.image_count or 0)
        return private_file_response(export.file, filename=export.download_name, content_type="application/zip",
                                     as_attachment=True)
