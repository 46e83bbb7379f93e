"""Broadcasts and A/B tests. SCAFFOLD: replaced by the broadcasts work."""


def broadcasts_tick(*, now) -> None:
    return None
