"""Assembles the management API."""

from django.urls import path
from ninja import NinjaAPI

from leadflow.api.auth import SecretKeyAuth
from leadflow.api.contacts import router as contacts_router

api = NinjaAPI(
    title="LeadFlow management API",
    version="1",
    description="Manage contacts, companies, forms, lead magnets and sources. "
                "Authenticate with `Authorization: Bearer SECRET_KEY` (leadflow keys create --kind secret).",
    auth=SecretKeyAuth(),
    urls_namespace="api",
)
api.add_router("/contacts", contacts_router)

urlpatterns = [path("", api.urls)]
