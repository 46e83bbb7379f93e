"""Management API: email broadcasts."""

from ninja import Router

router = Router(tags=["email broadcasts"])
