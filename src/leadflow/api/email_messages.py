"""Management API: email messages."""

from ninja import Router

router = Router(tags=["email messages"])
