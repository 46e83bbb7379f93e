"""Management API: email consent."""

from ninja import Router

router = Router(tags=["email consent"])
