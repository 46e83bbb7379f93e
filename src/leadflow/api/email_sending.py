"""Management API: email sending."""

from ninja import Router

router = Router(tags=["email sending"])
