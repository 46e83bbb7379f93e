"""Predictive scoring: a conversion model trained on the workspace's own history."""
