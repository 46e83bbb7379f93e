"""Sales pages, mounted under /sales/ in the `web` namespace."""

from django.urls import path

from leadflow.web import views_sales

urlpatterns = [
    path("", views_sales.inbox, name="sales"),
    path("team/", views_sales.team, name="sales-team"),
    path("alerts/", views_sales.alerts, name="sales-alerts"),
    path("alerts/<int:alert_id>/read/", views_sales.alert_read, name="sales-alert-read"),
    path("settings/", views_sales.lifecycle_settings, name="sales-settings"),
    path("leads/<int:contact_id>/", views_sales.lead, name="sales-lead"),
    path("leads/<int:contact_id>/<slug:action>/", views_sales.lead_action, name="sales-lead-action"),
    path("tasks/<int:task_id>/<slug:action>/", views_sales.task_action, name="sales-task-action"),
]
