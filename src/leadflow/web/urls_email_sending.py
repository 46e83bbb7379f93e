"""Email pages: sending (servers, domains, messaging settings), under /email/sending/."""

from django.urls import path

from leadflow.web import views_email_sending as views

urlpatterns = [
    path("", views.sending_overview, name="email-sending"),
    path("settings/", views.settings_page, name="email-settings"),
    path("servers/new/", views.server_edit, name="email-server-new"),
    path("servers/<int:server_id>/", views.server_edit, name="email-server-edit"),
    path("servers/<int:server_id>/test/", views.server_test, name="email-server-test"),
    path("servers/<int:server_id>/delete/", views.server_delete, name="email-server-delete"),
    path("domains/new/", views.domain_new, name="email-domain-new"),
    path("domains/<int:domain_id>/", views.domain_detail, name="email-domain"),
    path("domains/<int:domain_id>/check/", views.domain_check, name="email-domain-check"),
    path("domains/<int:domain_id>/delete/", views.domain_delete, name="email-domain-delete"),
]
