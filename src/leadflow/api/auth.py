"""Bearer secret-key authentication for the management API."""

from ninja.security import HttpBearer

from leadflow.core.models import KeyKind
from leadflow.core.services import api_key_authenticate


class SecretKeyAuth(HttpBearer):
    def authenticate(self, request, token):
        key = api_key_authenticate(raw=token, kind=KeyKind.SECRET)
        if key is None:
            return None
        request.workspace = key.workspace
        request.api_key = key
        return key


def actor(request) -> str:
    return f"key:{request.api_key.prefix}"
