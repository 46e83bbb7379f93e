"""Journey pages, mounted under /journeys/ in the `web` namespace."""

from django.urls import path

from leadflow.web import views_journeys as views

urlpatterns = [
    path("", views.journeys_list, name="journeys"),
    path("new/", views.journey_edit, name="journey-new"),
    path("<int:journey_id>/", views.journey_detail, name="journey"),
    path("<int:journey_id>/edit/", views.journey_edit, name="journey-edit"),
    path("<int:journey_id>/publish/", views.journey_publish_view, name="journey-publish"),
    path("<int:journey_id>/people/", views.journey_people_change, name="journey-people"),
    path("<int:journey_id>/export/", views.journey_export_view, name="journey-export"),
    path("<int:journey_id>/dry-run/", views.journey_dry_run, name="journey-dry-run"),
    path("<int:journey_id>/<str:action>/", views.journey_status_view, name="journey-status"),
]
