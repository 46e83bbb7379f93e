"""Public email endpoints: open pixel, click redirect, bounce and provider webhooks."""

urlpatterns: list = []
