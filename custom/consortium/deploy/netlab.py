"""Hospitals on separate hosts on one machine: Linux network namespaces, rate limits and a delaying relay."""


def register(sub) -> None:
    """Add the `consortium netlab ...` commands (work in progress)."""
