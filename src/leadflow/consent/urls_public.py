"""Public consent pages: one-click unsubscribe, preference centre, double opt-in confirmation.

Mounted at the site root; the paths are the ones `leadflow.consent.links` builds.
"""

from django.urls import path

from leadflow.consent import views

urlpatterns = [
    path("u/<str:token>", views.unsubscribe, name="consent-unsubscribe"),
    path("p/<str:token>", views.preferences, name="consent-preferences"),
    path("c/<str:token>", views.optin, name="consent-optin"),
]
