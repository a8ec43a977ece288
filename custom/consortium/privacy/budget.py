"""A hospital's privacy floor against a job's DP settings: refusals that name the limit and how to fix it.

The floor comes from the site's own config (`privacy:` in site_configs/<site>.yaml, copied into its kit),
which no job can see or change. Checks run at the site, before any training of the round.
"""

from __future__ import annotations

from pathlib import Path

from consortium.config import PrivacyConfig
from consortium.privacy.settings import DPSGDSettings  # not .dpsgd: it loads opacus, needless without DP


class BudgetRefused(Exception):
    """This site will not train this round of this job; the message says which limit and how to fix it."""


def check_job(floor: PrivacyConfig, dp: DPSGDSettings | None, *, site: str, source: Path | str) -> None:
    """Refuse a job whose DP settings are weaker than the site's floor (before its first round)."""
    where = f"privacy.{{}} in {source}"
    if dp is None:
        if floor.require_dp:
            raise BudgetRefused(
                f"site {site} trains only with DP-SGD ({where.format('require_dp')}) and this job has none. "
                "Fix: submit a DP variant of the job (e.g. fedavg_dp), or add dp_sgd: {target_epsilon, delta, "
                "max_grad_norm} to the job."
            )
        return
    if dp.delta > floor.delta:
        raise BudgetRefused(
            f"site {site} accepts delta up to {floor.delta:g} ({where.format('delta')}); the job asks for "
            f"{dp.delta:g}. Fix: set dp_sgd.delta to {floor.delta:g} or less."
        )
    if floor.max_clip_norm is not None and dp.max_grad_norm > floor.max_clip_norm:
        raise BudgetRefused(
            f"site {site} accepts a per-sample clipping bound up to {floor.max_clip_norm:g} "
            f"({where.format('max_clip_norm')}); the job asks for {dp.max_grad_norm:g}. "
            f"Fix: set dp_sgd.max_grad_norm to {floor.max_clip_norm:g} or less."
        )


def check_noise(floor: PrivacyConfig, noise_multiplier: float, *, site: str, source: Path | str) -> None:
    if noise_multiplier < floor.min_noise_multiplier:
        raise BudgetRefused(
            f"site {site} requires a noise multiplier of at least {floor.min_noise_multiplier:g} "
            f"(privacy.min_noise_multiplier in {source}); this job's DP-SGD uses {noise_multiplier:.3g}. "
            "Fix: lower dp_sgd.target_epsilon (more noise), or raise dp_sgd.noise_multiplier."
        )


def check_round(
    floor: PrivacyConfig, *, epsilon_after: float, delta: float, round_number: int, site: str, source: Path | str
) -> None:
    """Refuse the round (1-based `round_number`) if the job's epsilon after it would exceed the site's cap.

    `epsilon_after` is at the job's delta, which is <= the site's delta, so the check is conservative."""
    if floor.max_epsilon is not None and epsilon_after > floor.max_epsilon:
        raise BudgetRefused(
            f"site {site} refuses round {round_number}: it would bring this job's epsilon to {epsilon_after:.2f} "
            f"(delta {delta:g}), above the site's max_epsilon {floor.max_epsilon:g} (privacy.max_epsilon in "
            f"{source}). The site trains no further rounds of this job. Fix: lower dp_sgd.target_epsilon to at most "
            f"{floor.max_epsilon:g}, or run fewer rounds or local epochs."
        )


def check_budget(
    floor: PrivacyConfig, ledger, *, run: str, epsilon: float, delta: float, job: str, site: str, source: Path | str,
    round_number: int | None = None,
) -> None:  # fmt: skip
    """Refuse a job (or, with `round_number`, a round) whose run would take (epsilon, delta) in all when the
    other runs in the site's ledger (privacy.spending.Ledger) leave less of the site's budget across jobs."""
    budget = floor.budget
    if budget is None:
        return
    used_eps, used_delta = ledger.counted(exclude=run)
    left_eps, left_delta = budget.epsilon - used_eps, budget.delta - used_delta
    over_eps, over_delta = epsilon > left_eps + 1e-9, delta > left_delta * (1 + 1e-9)
    if not (over_eps or over_delta):
        return
    spent_by = [
        f"{' + '.join(r.jobs)} (epsilon {r.counted()[0]:.2f}, delta {r.counted()[1]:g}, {len(r.rounds)} round(s))"
        for key, r in ledger.runs.items() if key != run and r.counted() != (0.0, 0.0)
    ]  # fmt: skip
    what = f"round {round_number} would bring this job to" if round_number else "this job plans to spend"
    fixes = []
    if left_eps <= 0 or left_delta <= 0:
        part = "epsilon" if left_eps <= 0 else "delta (the deltas of all jobs add up: k jobs need k x theirs)"
        fixes.append(f"the budget's {part} is used up: only the hospital can raise privacy.budget in {source}")
    else:
        if over_eps:
            fixes.append(f"lower the job's target_epsilon (dp_sgd and dp_update together) to at most {left_eps:.2f}")
        if over_delta:
            fixes.append(f"lower the job's delta (dp_sgd.delta + dp_update.delta) to at most {left_delta:.3g}")
    done = "This round was not trained; the rounds before it are counted." if round_number else (
        "Nothing was trained or spent.")  # fmt: skip
    fixes.append(f"or run the job without {site}; the ledger: `consortium privacy ledger --site {site}`")
    raise BudgetRefused(
        f"site {site} refuses job {job}: {what} epsilon {epsilon:.2f} and delta {delta:g}, more than is left of "
        f"the site's privacy budget across jobs (privacy.budget in {source}: epsilon {budget.epsilon:g}, delta "
        f"{budget.delta:g}; spent by {'; '.join(spent_by) or 'no other job'}; left: epsilon {max(left_eps, 0):.2f}, "
        f"delta {max(left_delta, 0):.3g}). {done} Fix: {'; '.join(fixes)}."
    )
