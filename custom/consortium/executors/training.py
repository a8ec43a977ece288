"""A site's local training, chosen once per job from its settings: plain (the task's own `train`) or
patient-level DP-SGD (privacy/dpsgd.py). The executor's round is the same for both; only these differ.

Each strategy, every round: `begin_round` (the site's privacy floor and budget across jobs say yes, or
BudgetRefused), `train`, `end_round` (DP-SGD's ledger and the round's line in the site's spending ledger on its
disk before anything leaves), then `report()` (DP accounting for the result's metrics and meta) and `spent()`
(words for the progress line)."""

from __future__ import annotations

from dataclasses import dataclass

from consortium import constants as C
from consortium.privacy.budget import check_job, check_noise, check_round
from consortium.privacy.settings import DPSGDSettings


@dataclass
class Site:
    """What a strategy needs of the site: its config (privacy floor, name, file) and its training data."""

    cfg: object  # consortium.config.SiteConfig
    model: object  # the task's torch module
    train_loader: object
    batch_size: int
    local_epochs: int
    task: object  # the task module
    log: object  # log(message): the executor's site log
    budget: object  # executors.site_budget.JobBudget: the site's budget across jobs, its ledger


class PlainTraining:
    """The task's `train` on the site's own batches and Adam; models it trains are not differentially private."""

    private = False
    round_number = 0

    def begin_round(self, site: Site, incoming, fl_ctx) -> None:
        check_job(site.cfg.privacy, None, site=site.cfg.name, source=site.cfg.source)  # a require_dp floor says no
        self.round_number = (incoming.current_round or 0) + 1

    def train(self, site: Site, **options):
        return site.task.train(site.model, site.train_loader, **options)

    def end_round(self, site: Site, fl_ctx) -> None:
        if not site.budget.private:  # no DP at all (a DP-update filter writes its own round line)
            site.budget.round_sent(round_number=self.round_number, epsilon=None, delta=None)

    def report(self) -> dict:
        return {}

    def spent(self) -> str:
        return ""


class DPSGDTraining:
    """DP-SGD with the patient as the unit of privacy: noise fixed once per job from its target epsilon over all
    its steps, the site's floor checked once per job, and every round refused that would pass its max_epsilon."""

    private = True
    round_number = 0

    def __init__(self, settings: DPSGDSettings):
        self.settings = settings
        self.dp = None  # privacy.dpsgd.SiteDPSGD, made in the first round (Opacus is loaded only then)

    def begin_round(self, site: Site, incoming, fl_ctx) -> None:
        floor, name, source = site.cfg.privacy, site.cfg.name, site.cfg.source
        if self.dp is None:
            check_job(floor, self.settings, site=name, source=source)
            self.dp = self._start(site, incoming, fl_ctx)
        self.round_number = (incoming.current_round or 0) + 1
        after = self.dp.epsilon_after_round()
        check_round(floor, epsilon_after=after, delta=self.settings.delta, round_number=self.round_number, site=name,
                    source=source)  # fmt: skip
        site.budget.check_round(site.cfg, dpsgd_after=after, round_number=self.round_number)

    def _start(self, site: Site, incoming, fl_ctx):
        from consortium.privacy import ledger
        from consortium.privacy.dpsgd import SiteDPSGD

        floor, name = site.cfg.privacy, site.cfg.name
        dp = SiteDPSGD(self.settings, model=site.model, train_loader=site.train_loader, batch_size=site.batch_size,
                       decoder_pattern=getattr(site.task, "DECODER_PARAMS", None))  # fmt: skip
        prior = ledger.load_prior(ledger.site_root(fl_ctx), list(incoming.meta.get(C.META_RUN_CHAIN) or []))
        if prior:  # a resumed job: what this site spent in the jobs it continues still counts
            dp.accountant.history = list(prior[1])
            site.log(f"{name}: continuing DP-SGD accounting of job {prior[0]} ({dp.accountant.steps} steps)")
        sigma = dp.plan(rounds=incoming.total_rounds or 1, local_epochs=site.local_epochs)
        check_noise(floor, sigma, site=name, source=site.cfg.source)
        if self.settings.target_epsilon is None:  # a fixed noise multiplier: the plan needs this site's steps
            from consortium.privacy.accountant import spent

            steps = (incoming.total_rounds or 1) * dp.steps_per_round
            planned = spent(((float(sigma), dp.sample_rate, steps),), self.settings.delta).epsilon
            site.budget.plan_dpsgd(site.cfg, planned)
        site.log(
            f"{name}: DP-SGD over {dp.num_patients} patients ({dp.num_samples} samples): noise multiplier "
            f"{sigma:.3f}, per-patient clipping {self.settings.max_grad_norm:g}, Poisson rate {dp.sample_rate:.3f} "
            f"per patient, {dp.steps_per_round} steps per round, delta {self.settings.delta:g}; "
            f"trains {dp.trained_weights:,} weights ({self.settings.trainable}); site cap max_epsilon "
            f"{floor.max_epsilon}"
        )
        return dp

    def train(self, site: Site, **options):
        """The task's `sample_loss` on Opacus's per-sample-gradient wrapper, Poisson batches, clipping and noise."""
        return self.dp.train(site.task, **options)

    def end_round(self, site: Site, fl_ctx) -> None:
        from consortium.privacy import ledger

        ledger.save(ledger.site_root(fl_ctx), fl_ctx.get_job_id(), self.dp.accountant.history)
        spent = self.dp.accountant.spent(self.settings.delta)
        site.budget.round_sent(round_number=self.round_number, mechanism="dp_sgd", epsilon=float(spent.epsilon),
                               delta=float(self.settings.delta), accountant=spent.accountant,
                               noise=float(self.dp.noise_multiplier), sample_rate=float(self.dp.sample_rate),
                               steps=int(self.dp.accountant.steps))  # fmt: skip

    def report(self) -> dict:
        """DP-SGD accounting so far at this site in this job (empty before its first round)."""
        if self.dp is None:
            return {}
        # plain floats: FLARE's serializer refuses other types on the wire (a float subclass too)
        return {C.METRIC_DP_EPSILON: float(self.dp.epsilon()), C.METRIC_DP_DELTA: float(self.settings.delta),
                C.METRIC_DP_NOISE: float(self.dp.noise_multiplier)}  # fmt: skip

    def spent(self) -> str:
        return f"; DP-SGD epsilon {self.dp.epsilon():.2f} at delta {self.settings.delta:g}"


def local_training(dp_sgd: dict | None) -> PlainTraining | DPSGDTraining:
    """The job's local training, from the executor's `dp_sgd` argument (build_job's DPSGDSettings.to_dict())."""
    return DPSGDTraining(DPSGDSettings.from_dict(dp_sgd)) if dp_sgd is not None else PlainTraining()
