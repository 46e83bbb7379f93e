"""Email pages: content."""

urlpatterns: list = []
