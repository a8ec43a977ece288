"""One federated round at the server: which sites were asked, which answered, which were dropped and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundOutcome:
    """What happened to every site the round's task was offered to."""

    number: int  # 0-based, as FLARE counts
    targets: list[str]
    contributed: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # site -> reason
    not_awaited: list[str] = field(default_factory=list)  # absent sites that did not take the task

    def contribute(self, site: str) -> None:
        if site not in self.contributed:
            self.contributed.append(site)
        self.dropped.pop(site, None)

    def drop(self, site: str, reason: str) -> None:
        if site not in self.contributed:
            self.dropped.setdefault(site, reason)

    def record(self) -> dict:
        """The round's entry in metrics.json (besides each site's metrics)."""
        return {
            "targets": list(self.targets),
            "contributed": sorted(self.contributed),
            "dropped": dict(sorted(self.dropped.items())),
            "not_awaited": sorted(self.not_awaited),
        }

    def summary(self) -> str:
        """`2 of 3 sites contributed (hospital-c dropped: no result within 60 s)`."""
        text = f"{len(self.contributed)} of {len(self.targets)} sites contributed"
        notes = [f"{s} dropped: {r}" for s, r in sorted(self.dropped.items())]
        notes += [f"{s} absent, not awaited" for s in sorted(self.not_awaited)]
        return text + (f" ({'; '.join(notes)})" if notes else "")


class Attendance:
    """Which sites a round waits for.

    A site that missed a round (error, timeout, lost connection) is absent. Later rounds still offer it the
    task, so a site that comes back trains again, but they do not wait for it unless it takes the task."""

    def __init__(self) -> None:
        self.absent: dict[str, int] = {}  # site -> first round it missed

    def awaited(self, targets: list[str], *, picked: set[str], responded: set[str]) -> list[str]:
        """Sites the round still waits for: present ones that have not answered, and absent ones that took
        the task (they are back) and have not answered yet."""
        return [s for s in targets if s not in responded and (s not in self.absent or s in picked)]

    def close(self, outcome: RoundOutcome, *, picked: set[str]) -> None:
        outcome.not_awaited = [s for s in outcome.targets if s in self.absent and s not in picked]
        for site in outcome.contributed:
            self.absent.pop(site, None)
        for site in outcome.dropped:
            self.absent.setdefault(site, outcome.number)
        for site in outcome.not_awaited:
            outcome.dropped.pop(site, None)

    def seen(self, site: str) -> None:
        """A site delivered something (e.g. a late result): wait for it again from the next round."""
        self.absent.pop(site, None)

    def present(self, sites: list[str]) -> list[str]:
        return [s for s in sites if s not in self.absent]


def too_few(outcome: RoundOutcome, min_clients: int) -> str | None:
    """Why the job must end after this round, or None if enough sites contributed."""
    if len(outcome.contributed) >= min_clients:
        return None
    who = ", ".join(sorted(outcome.contributed)) or "none"
    return (
        f"round {outcome.number + 1}: only {len(outcome.contributed)} site(s) contributed ({who}), fewer than the "
        f"job's min_clients {min_clients}; the job ends here and keeps the global model of the last complete round. "
        f"{outcome.summary()}"
    )
