"""Email pages: sending."""

urlpatterns: list = []
