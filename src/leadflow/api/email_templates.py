"""Management API: email templates."""

from ninja import Router

router = Router(tags=["email templates"])
