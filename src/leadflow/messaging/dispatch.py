"""The email dispatcher. SCAFFOLD: replaced by the sending work."""


def dispatch_run(*, limit: int = 500) -> int:
    return 0
