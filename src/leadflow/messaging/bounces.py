"""Bounces and complaints. SCAFFOLD: replaced by the bounces work."""


def mailbox_poll_run(*, now) -> None:
    return None
