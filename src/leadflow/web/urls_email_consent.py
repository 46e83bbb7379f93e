"""Email pages: consent (suppression list and subscription topics), under /email/consent/."""

from django.urls import path

from leadflow.web import views_email_consent as views

urlpatterns = [
    path("suppressions/", views.suppressions, name="email-suppressions"),
    path("suppressions/add/", views.suppression_add, name="email-suppression-add"),
    path("suppressions/lift/", views.suppression_lift, name="email-suppression-lift"),
    path("suppressions/import/", views.suppressions_import, name="email-suppressions-import"),
    path("topics/", views.topics, name="email-topics"),
    path("topics/new/", views.topic_edit, name="email-topic-new"),
    path("topics/<int:topic_id>/edit/", views.topic_edit, name="email-topic-edit"),
    path("topics/<int:topic_id>/archive/", views.topic_archive, name="email-topic-archive"),
]
