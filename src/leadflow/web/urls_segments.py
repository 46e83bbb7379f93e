"""Segment pages, mounted under /segments/ in the `web` namespace."""

from django.urls import path

from leadflow.web import views_segments

urlpatterns = [
    path("", views_segments.segments_list, name="segments"),
    path("new/", views_segments.segment_edit, name="segment-new"),
    path("preview/", views_segments.segment_preview_view, name="segment-preview"),
    path("<int:segment_id>/", views_segments.segment_detail, name="segment"),
    path("<int:segment_id>/edit/", views_segments.segment_edit, name="segment-edit"),
    path("<int:segment_id>/members.csv", views_segments.segment_export, name="segment-export"),
    path("<int:segment_id>/members/", views_segments.segment_members_change, name="segment-members"),
    path("<int:segment_id>/archive/", views_segments.segment_archive, name="segment-archive"),
]
