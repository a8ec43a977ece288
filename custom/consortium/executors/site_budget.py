"""One job at one site against the site's privacy budget across jobs (privacy.spending): admitted before its
data are read, each round's spending appended to the site's ledger before the update leaves.

The planned spend comes from the job's settings: a DP-SGD target epsilon (at its delta) plus the DP-update
filter's epsilon over the job's rounds (its noise is fixed from its own settings). A DP-SGD job with a fixed
noise multiplier spends what its steps make of it, which needs the site's number of samples: it is admitted
once those are known (`plan_dpsgd`), still before it trains."""

from __future__ import annotations

from consortium import constants as C
from consortium.privacy import spending
from consortium.privacy.budget import check_budget, check_job
from consortium.privacy.settings import DPSGDSettings, DPUpdateSettings


def update_epsilon(settings: DPUpdateSettings, rounds: int) -> float:
    """The DP-update filter's epsilon at its delta after `rounds` rounds (one Gaussian mechanism per round)."""
    from consortium.privacy.accountant import spent

    noise = settings.noise_for(rounds)
    return spent(((noise / 2, 1.0, rounds),), settings.delta).epsilon


class JobBudget:
    """Plan, admission and per-round records of one job at this site (made once per job by SiteTrainer)."""

    def __init__(self, dp_sgd: DPSGDSettings | None, dp_update: DPUpdateSettings | None):
        self.dp_sgd, self.dp_update = dp_sgd, dp_update
        self.root = self.job = self.run = None
        self.chain: list = []
        self.update_plan = 0.0  # the DP-update filter's planned epsilon
        self.planned: tuple[float, float] | None = None  # (epsilon, delta) once admitted
        self.admitted = False  # admit() ran to its end (a refusal raises; the executor then refuses every round)

    @property
    def private(self) -> bool:
        return self.dp_sgd is not None or self.dp_update is not None

    def admit(self, cfg, incoming, fl_ctx, log) -> None:
        """Before the job's data are read: refuse it (BudgetRefused, recorded in the ledger) if its planned
        spend exceeds what the other runs left of `cfg.privacy.budget`; else reserve the plan in the ledger."""
        from consortium.privacy.ledger import site_root

        self.root, self.job = site_root(fl_ctx), fl_ctx.get_job_id()
        self.chain = list((incoming.meta or {}).get(C.META_RUN_CHAIN) or [self.job])
        self.run = spending.run_key(self.job, self.chain)
        ledger = spending.read(spending.path(self.root))
        for problem in ledger.problems:
            log(f"privacy ledger: {problem}")
        check_job(cfg.privacy, self.dp_sgd, site=cfg.name, source=cfg.source)  # require_dp, delta, clipping
        if not self.private:
            if cfg.privacy.budget is not None:
                log(f"{cfg.name}: job {self.job} trains without DP: no epsilon bounds what it sends, so the site's "
                    f"budget across jobs (privacy.budget in {cfg.source}) cannot count it; the ledger records it "
                    "as 'no DP'. To refuse such jobs set privacy.require_dp: true")  # fmt: skip
            self._plan(None, None, cfg)
            self.admitted = True
            return
        if self.dp_update is not None:
            self.update_plan = update_epsilon(self.dp_update, incoming.total_rounds or 1)
        if self.dp_sgd is not None and self.dp_sgd.target_epsilon is None:
            # a fixed noise multiplier: the whole plan needs the site's sample count; refuse now what is known
            # (any DP-SGD step spends some epsilon: a used-up budget refuses the job here, before data are read)
            self._check(cfg, max(self.update_plan, 1e-6), self._delta(), ledger)
        else:
            self._plan(self.update_plan + (self.dp_sgd.target_epsilon if self.dp_sgd else 0.0), self._delta(), cfg)
        self.admitted = True

    def plan_dpsgd(self, cfg, epsilon: float) -> None:
        """A fixed-noise DP-SGD job, once its sample rate and steps are known: its planned DP-SGD epsilon."""
        if self.planned is None:
            self._plan(self.update_plan + epsilon, self._delta(), cfg)

    def check_round(self, cfg, *, dpsgd_after: float, round_number: int) -> None:
        """Before a DP-SGD round: its run may spend more than planned (rounds run again after a restart); refuse
        the round if that takes more than the other runs left."""
        epsilon = max(self.planned[0], dpsgd_after + self.update_plan) if self.planned else dpsgd_after
        self._check(cfg, epsilon, self._delta(), spending.read(spending.path(self.root)), round_number=round_number)

    def refused(self, reason: str) -> None:
        if self.root is not None:
            spending.append(self.root, {"kind": spending.REFUSED, "job": self.job, "chain": self.chain,
                                        "reason": reason[:2000]})  # fmt: skip

    def round_sent(self, *, round_number: int, mechanism: str = spending.NO_DP, **spent) -> None:
        """The round's update is about to leave: its spending so far in this run, on disk first."""
        spending.append(self.root, {"kind": spending.ROUND, "job": self.job, "chain": self.chain,
                                    "round": round_number, "mechanism": mechanism, **spent})  # fmt: skip

    def _delta(self) -> float:
        return sum(s.delta for s in (self.dp_sgd, self.dp_update) if s is not None)

    def _check(self, cfg, epsilon, delta, ledger, round_number=None) -> None:
        check_budget(cfg.privacy, ledger, run=self.run, epsilon=epsilon, delta=delta, job=self.job, site=cfg.name,
                     source=cfg.source, round_number=round_number)  # fmt: skip

    def _plan(self, epsilon, delta, cfg) -> None:
        mechanisms = [m for m, s in (("dp_sgd", self.dp_sgd), ("dp_update", self.dp_update)) if s is not None]
        record = {"kind": spending.PLAN, "job": self.job, "chain": self.chain, "epsilon": epsilon, "delta": delta,
                  "mechanisms": mechanisms}  # fmt: skip
        check = None if epsilon is None else (lambda ledger: self._check(cfg, epsilon, delta, ledger))
        spending.append(self.root, record, check=check)
        self.planned = None if epsilon is None else (epsilon, delta)
