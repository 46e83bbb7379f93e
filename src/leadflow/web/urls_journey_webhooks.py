"""Journey webhook pages, mounted under /journeys/webhooks/ in the `web` namespace."""

from django.urls import path

from leadflow.web import views_journey_webhooks as views

urlpatterns = [
    path("", views.webhooks_list, name="journey-webhooks"),
    path("new/", views.webhook_create, name="journey-webhook-new"),
    path("<int:endpoint_id>/", views.webhook_detail, name="journey-webhook"),
    path("<int:endpoint_id>/edit/", views.webhook_update, name="journey-webhook-edit"),
    path("<int:endpoint_id>/rotate/", views.webhook_rotate, name="journey-webhook-rotate"),
    path("<int:endpoint_id>/disable/", views.webhook_disable, name="journey-webhook-disable"),
    path("<int:endpoint_id>/enable/", views.webhook_enable, name="journey-webhook-enable"),
    path("<int:endpoint_id>/deliveries/<int:delivery_id>/retry/", views.webhook_delivery_retry,
         name="journey-webhook-retry"),
]
