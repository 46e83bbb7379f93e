"""Assembles the management API."""

from django.urls import path
from ninja import NinjaAPI
from ninja.errors import ValidationError

from leadflow.api.auth import SecretKeyAuth
from leadflow.api.companies import router as companies_router
from leadflow.api.contacts import router as contacts_router
from leadflow.api.forms import router as forms_router
from leadflow.api.imports import router as imports_router
from leadflow.api.magnets import router as magnets_router
from leadflow.api.scoring import router as scoring_router
from leadflow.api.segments import router as segments_router
from leadflow.api.sources import router as sources_router
from leadflow.api.workspace import router as workspace_router
from leadflow.core.services import ServiceError

api = NinjaAPI(
    title="LeadFlow management API",
    version="1",
    description="Manage contacts, companies, forms, lead magnets and sources. "
                "Authenticate with `Authorization: Bearer SECRET_KEY` (leadflow keys create --kind secret). "
                "Lists are newest first unless said otherwise and paginated by an opaque cursor: pass "
                "the `next` value of a page to get the following one. Errors answer `{\"detail\": message}`.",
    auth=SecretKeyAuth(),
    urls_namespace="api",
)


@api.exception_handler(ServiceError)
def service_error(request, exc: ServiceError):
    return api.create_response(request, {"detail": str(exc)}, status=400)


def _where(loc: list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        kind = parts.pop(0)
        if kind == "body" and len(parts) > 1:
            parts.pop(0)  # the handler's parameter name, not a field the client sent
    return ".".join(parts) or "request"


@api.exception_handler(ValidationError)
def validation_error(request, exc: ValidationError):
    detail = "; ".join(f"{_where(e.get('loc', []))}: {e.get('msg', 'is not valid')}" for e in exc.errors)
    return api.create_response(request, {"detail": detail, "errors": exc.errors}, status=422)


api.add_router("/workspace", workspace_router)
api.add_router("/contacts", contacts_router)
api.add_router("/companies", companies_router)
api.add_router("/forms", forms_router)
api.add_router("/magnets", magnets_router)
api.add_router("/sources", sources_router)
api.add_router("/imports", imports_router)
api.add_router("/sales", "leadflow.api.sales.router")
api.add_router("/lifecycle", "leadflow.api.lifecycle.router")
api.add_router("/scoring", scoring_router)
api.add_router("/segments", segments_router)
api.add_router("/email/templates", "leadflow.api.email_templates.router")
api.add_router("/email/sending", "leadflow.api.email_sending.router")
api.add_router("/email/consent", "leadflow.api.email_consent.router")
api.add_router("/email/messages", "leadflow.api.email_messages.router")
api.add_router("/email/broadcasts", "leadflow.api.email_broadcasts.router")
api.add_router("/journeys", "leadflow.api.journeys.router")
api.add_router("/journey-streams", "leadflow.api.journey_streams.router")
api.add_router("/journey-webhooks", "leadflow.api.journey_webhooks.router")

urlpatterns = [path("", api.urls)]
