"""Email pages: broadcasts."""

urlpatterns: list = []
