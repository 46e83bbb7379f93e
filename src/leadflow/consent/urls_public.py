"""Public consent pages: one-click unsubscribe, preference centre, double opt-in confirmation."""

urlpatterns: list = []
