"""The consortium's charter (`charter:` in provisioning/consortium.yaml): the purposes jobs may serve, the uses no
job and no hospital may approve, and the data-sharing agreement (id and version) every job runs under.

It is validated at load (errors name the file and field), hashed over its canonical form, written into every
kit (`local/consortium/charter.json`, under the kit's signature) and checked three times: a job's `purpose:` and
`agreement:` at job load, a hospital's `approved_purposes:` when kits are made, and both again by each
hospital's own kit when a job is deployed there (gate.py)."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from consortium.config import ConfigError, read_yaml_mapping

KIT_CHARTER_FILE = "charter.json"  # <kit>/local/consortium/charter.json, written by `consortium provision`
DOC = "docs/deployment.md#governance"
KEYS = ("purposes", "forbidden_uses", "agreement")
AGREEMENT_KEYS = ("id", "version")
MAX_LEN = 200


def norm(text: str) -> str:
    """How two spellings of a purpose are compared for 'did you mean' and for forbidden uses."""
    return " ".join(str(text).casefold().split())


@dataclass(frozen=True)
class Agreement:
    id: str
    version: str

    def __str__(self) -> str:
        return f"{self.id} version {self.version}"


@dataclass(frozen=True)
class Charter:
    purposes: tuple[str, ...]
    forbidden_uses: tuple[str, ...]
    agreement: Agreement
    source: Path | None = field(default=None, compare=False)  # the file it was read from, for messages

    def to_dict(self) -> dict:
        return {
            "purposes": list(self.purposes),
            "forbidden_uses": list(self.forbidden_uses),
            "agreement": {"id": self.agreement.id, "version": self.agreement.version},
        }

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON (sorted keys, purposes and forbidden uses in sorted order): two files
        that say the same have the same hash, whatever their comments, layout or order."""
        body = self.to_dict()
        body["purposes"], body["forbidden_uses"] = sorted(body["purposes"]), sorted(body["forbidden_uses"])
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def where(self) -> str:
        return str(self.source) if self.source else "the charter"

    def forbids(self, purpose: str) -> bool:
        return norm(purpose) in {norm(u) for u in self.forbidden_uses}

    def purpose_problem(self, purpose) -> str | None:
        """Why `purpose` is not one of the charter's purposes (None if it is), with the nearest spelling."""
        if not isinstance(purpose, str) or not purpose.strip():
            return f"missing: state one of the charter's purposes ({self.where}: charter.purposes): {self._listed()}"
        if purpose in self.purposes:
            return None
        if self.forbids(purpose):
            return (
                f"{purpose!r} is a use the charter forbids ({self.where}: charter.forbidden_uses); no job may "
                "serve it and no hospital may approve it"
            )
        where = f"({self.where}: charter.purposes)"
        return f"{purpose!r} is not a purpose of the charter {where}{suggest(purpose, self.purposes)}"

    def agreement_problem(self, version) -> str | None:
        """Why `version` is not the charter's agreement version (None if it is)."""
        wanted = f'agreement: "{self.agreement.version}"'
        if version in (None, ""):
            return (
                f"missing: state the version of the data-sharing agreement the job runs under, {wanted} "
                f"({self.agreement}, {self.where}: charter.agreement)"
            )
        if str(version) != self.agreement.version:
            return (
                f"version {str(version)!r} is not the version of the charter's data-sharing agreement "
                f"{self.agreement.id} ({self.agreement.version!r}, {self.where}: charter.agreement.version); jobs "
                f"run under the agreement in force: {wanted} (quote it, so YAML keeps it as written)"
            )
        return None

    def _listed(self) -> str:
        return ", ".join(repr(p) for p in self.purposes)


def suggest(word: str, choices) -> str:
    """'; did you mean 'x'?' for the nearest of `choices`, then the choices; '' if there are none."""
    choices = list(choices)
    if not choices:
        return ""
    by_norm = {norm(c): c for c in choices}
    close = difflib.get_close_matches(norm(word), list(by_norm), n=1, cutoff=0.6)
    hint = f"; did you mean {by_norm[close[0]]!r}?" if close else ""
    return f"{hint} Allowed: {', '.join(repr(c) for c in choices)}"


def _text_list(raw, path, name: str, *, allow_empty: bool) -> tuple[str, ...]:
    if raw is None and allow_empty:
        return ()
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise ConfigError(f"{path}: field 'charter.{name}': expected a list of phrases, got {raw!r}")
    out, seen = [], {}
    for i, item in enumerate(raw):
        where = f"charter.{name}[{i}]"
        if not isinstance(item, str) or not item.strip() or "\n" in item or len(item) > MAX_LEN:
            raise ConfigError(f"{path}: field '{where}': {item!r} must be a phrase on one line, 1-{MAX_LEN} characters")
        if norm(item) in seen:
            raise ConfigError(f"{path}: field '{where}': {item!r} is listed twice (also {seen[norm(item)]})")
        seen[norm(item)] = where
        out.append(" ".join(item.split()))
    return tuple(out)


def _version(raw, path) -> str:
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, dict)) or not str(raw).strip():
        raise ConfigError(f"{path}: field 'charter.agreement.version': {raw!r} is not a version, e.g. \"1.0\"")
    return str(raw).strip()


def parse_charter(raw, path) -> Charter:
    """The charter from its mapping in `path` (the consortium definition); errors name the file and field."""
    if raw is None:
        raise ConfigError(
            f"{path}: field 'charter': missing. The consortium's charter lists the purposes jobs may serve "
            f"(purposes), the uses nobody may approve (forbidden_uses) and the data-sharing agreement (agreement: "
            f"{{id, version}}); see {DOC}"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: field 'charter': expected a mapping with {', '.join(KEYS)}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: field 'charter.{unknown[0]}': unknown key. Allowed: {', '.join(KEYS)}")
    purposes = _text_list(raw.get("purposes"), path, "purposes", allow_empty=False)
    forbidden = _text_list(raw.get("forbidden_uses"), path, "forbidden_uses", allow_empty=True)
    clash = [(i, p) for i, p in enumerate(purposes) if norm(p) in {norm(u) for u in forbidden}]
    if clash:
        i, p = clash[0]
        raise ConfigError(
            f"{path}: field 'charter.purposes[{i}]': {p!r} is also a forbidden use (charter.forbidden_uses)"
        )
    agreement = raw.get("agreement")
    if not isinstance(agreement, dict):
        raise ConfigError(
            f"{path}: field 'charter.agreement': expected {{id: ..., version: ...}} (the data-sharing agreement's "
            f"identifier and version), got {agreement!r}"
        )
    unknown = sorted(set(agreement) - set(AGREEMENT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: field 'charter.agreement.{unknown[0]}': unknown key. Allowed: id, version")
    agreement_id = agreement.get("id")
    if not isinstance(agreement_id, str) or not agreement_id.strip():
        raise ConfigError(f"{path}: field 'charter.agreement.id': {agreement_id!r} is not the agreement's identifier")
    version = _version(agreement.get("version"), path)
    return Charter(purposes, forbidden, Agreement(agreement_id.strip(), version), source=Path(path))


def load_charter(path: str | Path) -> Charter:
    """The charter of the consortium definition at `path` (only that section is read)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"consortium definition {path} not found (expected provisioning/consortium.yaml; --consortium)"
        )
    return parse_charter(read_yaml_mapping(path).get("charter"), path)


def check_site_approvals(charter: Charter, sites: dict) -> None:
    """Every purpose a hospital approves is one of the charter's, and none is a use it forbids."""
    for cfg in sites.values():
        for i, purpose in enumerate(cfg.approved_purposes):
            where = f"{cfg.source}: field 'approved_purposes[{i}]'"
            if charter.forbids(purpose):
                raise ConfigError(
                    f"{where}: {purpose!r} is a use the charter forbids ({charter.where}: charter.forbidden_uses); "
                    "a hospital cannot approve it. Remove it"
                )
            if purpose not in charter.purposes:
                raise ConfigError(
                    f"{where}: {purpose!r} is not a purpose of the charter ({charter.where}: charter.purposes)"
                    f"{suggest(purpose, charter.purposes)}"
                )


# -- the charter in a kit -------------------------------------------------------------------------------------
def write_kit_charter(folder: str | Path, charter: Charter) -> Path:
    """`folder`/charter.json (a kit's local/consortium/): the charter, its hash and where it came from."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KIT_CHARTER_FILE
    body = {"source": charter.source.name if charter.source else None, "sha256": charter.sha256,
            "charter": charter.to_dict()}  # fmt: skip
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def read_kit_charter(folder: str | Path) -> Charter:
    """The charter a kit carries in `folder` (its local/consortium/); refuses a file edited after provisioning."""
    path = Path(folder) / KIT_CHARTER_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing: this kit carries no charter; provision the kits again (`consortium provision`)"
        )
    try:
        body = json.loads(path.read_text())
        charter = parse_charter(body.get("charter"), path)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a charter file ({exc}); provision the kits again") from None
    if body.get("sha256") != charter.sha256:
        raise ConfigError(
            f"{path}: field 'sha256': {body.get('sha256')!r} is not the hash of the charter in the file "
            f"({charter.sha256}): the file was edited after provisioning; provision the kits again"
        )
    return charter
