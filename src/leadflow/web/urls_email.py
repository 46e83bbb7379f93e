"""URLs of the email pages (under /email/): content, sending, consent, broadcasts."""

from django.urls import include, path

urlpatterns = [
    path("", include("leadflow.web.urls_email_content")),
    path("sending/", include("leadflow.web.urls_email_sending")),
    path("consent/", include("leadflow.web.urls_email_consent")),
    path("broadcasts/", include("leadflow.web.urls_email_broadcasts")),
]
