"""Federated data-quality pre-flight: FLARE's federated statistics over every site's images and labels."""
