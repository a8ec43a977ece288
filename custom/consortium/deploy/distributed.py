"""Distributed provisioning: each hospital makes its own key and request; the consortium signs; the site packages."""


def register(sub) -> None:
    """Add the distributed-provisioning commands (work in progress)."""
