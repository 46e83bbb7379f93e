"""Top-level URL map: tracking API, management API, hosted forms, the web UI and the admin."""

from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path, re_path

from leadflow.tracking import api_views, public_views

urlpatterns = [
    re_path(r"^v1/(?P<kind>identify|track|page|screen|group|alias|batch|import|[itpsgab])/?$",
            api_views.ingest, name="ingest"),
    path("t/lf.js", public_views.tracking_script, name="tracking-script"),
    path("f/<slug:workspace_slug>/<slug:form_slug>/", public_views.hosted_form, name="hosted-form"),
    path("m/<str:token>", public_views.magnet_download, name="magnet-download"),
    path("", include("leadflow.messaging.urls_public")),
    path("", include("leadflow.consent.urls_public")),
    path("healthz", lambda request: HttpResponse("ok", content_type="text/plain")),
    path("api/", include("leadflow.api.urls")),
    path("admin/", admin.site.urls),
    path("", include("leadflow.web.urls")),
]
