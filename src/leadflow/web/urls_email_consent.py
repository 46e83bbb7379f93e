"""Email pages: consent."""

urlpatterns: list = []
