"""The trail's entry in a participant's own `local/privacy.json`: FLARE builds the `components` listed there into
every job process of that site or server (only when the file also defines a scope), after the job's own."""

from __future__ import annotations

from consortium import constants as C

RECORDER_PATH = "consortium.audit_trail.recorder.ExchangeRecorder"


def trail_component() -> dict:
    return {"id": C.TRAIL_COMPONENT_ID, "path": RECORDER_PATH, "args": {}}


def with_trail(privacy: dict, *, default_scope: str) -> dict:
    """`privacy` (a privacy.json dict) with the trail recorder among its components, and with `default_scope`
    as an empty default scope if it defines none (FLARE ignores the components of a file without scopes)."""
    out = dict(privacy)
    components = [c for c in out.get("components", []) if c.get("id") != C.TRAIL_COMPONENT_ID]
    out["components"] = components + [trail_component()]
    if not out.get("scopes"):
        out["scopes"] = [{"name": default_scope, "properties": {}}]
        out["default_scope"] = default_scope
    return out
