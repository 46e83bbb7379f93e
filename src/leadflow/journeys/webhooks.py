"""PLACEHOLDER: being written; replaced before this lands."""
def webhooks_dispatch(**kwargs) -> int:
    return 0
