"""Public email endpoints: open pixel, click redirect, bounce and provider webhooks."""

from django.urls import path

from leadflow.messaging import views_public

urlpatterns = [
    path("e/o/<str:token>", views_public.open_pixel, name="email-open"),
    path("e/c/<str:token>", views_public.click_redirect, name="email-click"),
    path("hooks/email/inbound", views_public.inbound_mime, name="email-hook-inbound"),
    path("hooks/email/ses", views_public.ses_hook, name="email-hook-ses"),
    path("hooks/email/postmark", views_public.postmark_hook, name="email-hook-postmark"),
]
