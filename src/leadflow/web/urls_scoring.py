"""URLs of the Scoring pages (included under /scoring/ by web.urls, namespace `web`)."""

from django.urls import path

from leadflow.web import views_scoring as views

urlpatterns = [
    path("", views.scoring_page, name="scoring"),
    path("rules/new/", views.rule_edit, name="scoring-rule-new"),
    path("rules/<int:rule_id>/", views.rule_edit, name="scoring-rule-edit"),
    path("rules/<int:rule_id>/toggle/", views.rule_toggle, name="scoring-rule-toggle"),
    path("rules/<int:rule_id>/delete/", views.rule_delete, name="scoring-rule-delete"),
    path("settings/", views.scoring_settings, name="scoring-settings"),
]
