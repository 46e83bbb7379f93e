"""Broadcast pages, mounted under /email/broadcasts/ in the `web` namespace."""

from django.urls import path

from leadflow.web import views_email_broadcasts as views

urlpatterns = [
    path("", views.broadcasts_list, name="email-broadcasts"),
    path("new/", views.broadcast_edit, name="email-broadcast-new"),
    path("<int:broadcast_id>/", views.broadcast_detail, name="email-broadcast"),
    path("<int:broadcast_id>/edit/", views.broadcast_edit, name="email-broadcast-edit"),
    path("<int:broadcast_id>/confirm/", views.broadcast_confirm, name="email-broadcast-confirm"),
    path("<int:broadcast_id>/subject-variant/", views.broadcast_subject_variant,
         name="email-broadcast-subject-variant"),
    path("<int:broadcast_id>/<str:action>/", views.broadcast_action, name="email-broadcast-action"),
]
