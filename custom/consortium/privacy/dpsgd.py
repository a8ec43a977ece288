"""DP-SGD at one site for one job, with the patient as the unit of privacy.

A patient contributes several slices, so clipping single slices would not bound what one patient reveals.
Batches are drawn by Poisson sampling of patients (every patient in or out, with all its slices); Opacus
computes every slice's gradient, this module averages them per patient, clips each patient's gradient to
`max_grad_norm` and adds Gaussian noise of std noise_multiplier x max_grad_norm (Opacus's DPOptimizer).
`SiteDPSGD.train` runs the shared training loop (tasks.common.train_loop) on the wrapped model, these batches
and this optimizer, with the task's `sample_loss` (a mean of per-sample terms, which per-sample clipping needs).
"""

from __future__ import annotations

import os
import re

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn

from consortium.privacy.accountant import RDPAccountant, check_dp_args, noise_for_target
from consortium.privacy.persample import ConvGradSampleModule
from consortium.privacy.settings import DPSGDSettings  # noqa: F401  (importable from here too)
from consortium.tasks.common import TrainResult, train_loop


def freeze_for_dp(model: nn.Module, trainable: str, *, decoder_pattern: str | None = None) -> int:
    """Leave only the `trainable` weights to DP-SGD (requires_grad); returns how many weights it trains.
    Refuses a pattern that matches nothing, or "decoder" for a task without DECODER_PARAMS."""
    if trainable == "all":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == "decoder" and not decoder_pattern:
        raise ValueError("dp_sgd.trainable: decoder: this task names no decoder (DECODER_PARAMS); use all or a regex")
    pattern = re.compile(decoder_pattern if trainable == "decoder" else trainable)
    kept = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(pattern.search(name)))
        kept += p.numel() if p.requires_grad else 0
    if kept == 0:
        raise ValueError(f"dp_sgd.trainable: {trainable!r} matches none of the model's parameters")
    return kept


def secure_generator() -> torch.Generator:
    """A generator seeded from the OS, never from the job's seed: a job author who knows the seed must not be
    able to replay the sampling or the noise."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def patient_groups(dataset) -> list[list[int]]:
    """Dataset indices of each patient, from the records' `patient_id` (the task's manifest column); a
    dataset whose every sample is a different patient says so with `one_patient_per_sample = True`."""
    if getattr(dataset, "one_patient_per_sample", False) is True:
        return [[i] for i in range(len(dataset))]
    records = getattr(dataset, "data", None)
    if records is None or not all(isinstance(r, dict) and "patient_id" in r for r in records):
        raise ValueError(
            "DP-SGD protects whole patients: it needs every training sample's patient_id "
            "(dataset.data[i]['patient_id'], from the manifest), or one_patient_per_sample = True on a dataset "
            "with one sample per patient; this task's dataset has neither"
        )
    by_patient: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_patient.setdefault(str(record["patient_id"]), []).append(index)
    return list(by_patient.values())


class PatientDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer, clipping per patient: `groups` gives each slice of the batch its patient
    (0..k-1); slice gradients are averaged per patient, and each patient's gradient is clipped."""

    groups: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        groups = self.groups
        if groups is None:
            raise RuntimeError("PatientDPOptimizer: the batch's patient groups were not set")
        k = int(groups.max()) + 1 if groups.numel() else 0
        counts = torch.bincount(groups, minlength=k).clamp(min=1)
        per_patient = []
        for p in self.params:
            samples = self._get_flat_grad_sample(p).to(p.dtype)
            if samples.shape[0] != groups.shape[0]:
                raise RuntimeError(f"PatientDPOptimizer: {samples.shape[0]} slice gradients, {len(groups)} groups")
            total = samples.new_zeros((k,) + samples.shape[1:]).index_add_(0, groups, samples)
            per_patient.append(total / counts.to(p.dtype).view(-1, *([1] * (samples.dim() - 1))))
        if k:
            norms = torch.stack([g.reshape(k, -1).norm(2, dim=1) for g in per_patient], dim=1).norm(2, dim=1)
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        else:  # an empty Poisson batch: the step is noise alone
            factor = torch.zeros(0)
        for p, grads in zip(self.params, per_patient, strict=True):
            _check_processed_flag(p.grad_sample)
            clipped = torch.einsum("i,i...", factor.to(grads), grads)
            p.summed_grad = clipped if p.summed_grad is None else p.summed_grad + clipped
            _mark_as_processed(p.grad_sample)


class PoissonPatients:
    """Batches in which every patient is included independently with probability `sample_rate`, with all
    its slices (what the accountant assumes). Every draw is a DP-SGD step, empty ones included: those are
    noise-only optimizer steps taken here instead of reaching the training loop."""

    def __init__(self, dataset, collate_fn, patients: list[list[int]], *, sample_rate, steps, site: "SiteDPSGD"):
        self.dataset, self.collate_fn, self.patients, self.site = dataset, collate_fn, patients, site
        self.sampler = UniformWithReplacementSampler(
            num_samples=len(patients), sample_rate=sample_rate, generator=secure_generator(), steps=steps
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for chosen in self.sampler:
            self.site.count_step()
            indices, groups = [], []
            for group, patient in enumerate(chosen):
                indices += self.patients[patient]
                groups += [group] * len(self.patients[patient])
            self.site.set_groups(torch.tensor(groups, dtype=torch.long))
            if not indices:
                self.site.noise_only_step()
                continue
            yield self.collate_fn([self.dataset[i] for i in indices])


class SiteDPSGD:
    """Wraps a site's model and training data once per job; hands out a DP optimizer per round; accounts."""

    def __init__(
        self, settings: DPSGDSettings, *, model: nn.Module, train_loader, batch_size: int, decoder_pattern=None
    ):
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ValueError(f"DP-SGD cannot train this model: {'; '.join(str(p) for p in problems)}")
        self.settings = settings
        self.trained_weights = freeze_for_dp(model, settings.trainable, decoder_pattern=decoder_pattern)
        dataset = train_loader.dataset
        patients = patient_groups(dataset)
        self.num_patients, self.num_samples = len(patients), len(dataset)
        try:  # delta < 1 / n of this site's patients, or refused here, before any step is taken or accounted
            check_dp_args(delta=settings.delta, num_patients=self.num_patients)
        except ValueError as exc:
            raise ValueError(f"dp_sgd.{exc}") from None
        # every patient is drawn with the same probability; batches hold `batch_size` slices on average
        self.sample_rate = min(1.0, batch_size / self.num_samples)
        self.expected_patients = self.sample_rate * self.num_patients  # the mean gradient's denominator
        self.steps_per_epoch = max(1, round(1 / self.sample_rate))
        self.module = ConvGradSampleModule(model, loss_reduction="mean")  # shares the model's parameters
        self.accountant = RDPAccountant()
        self.noise_multiplier = settings.noise_multiplier
        self._noise = secure_generator()
        self._optimizer: PatientDPOptimizer | None = None
        self.loader = PoissonPatients(
            dataset,
            train_loader.collate_fn,
            patients,
            sample_rate=self.sample_rate,
            steps=self.steps_per_epoch,
            site=self,
        )

    def plan(self, *, rounds: int, local_epochs: int) -> float:
        """Fix the noise multiplier for the whole job (from the target epsilon over all its steps)."""
        self.steps_per_round = local_epochs * self.steps_per_epoch
        if self.noise_multiplier is None:
            self.noise_multiplier = noise_for_target(
                target_epsilon=self.settings.target_epsilon,
                delta=self.settings.delta,
                sample_rate=self.sample_rate,
                steps=rounds * self.steps_per_round,
            )
        check_dp_args(delta=self.settings.delta, noise_multiplier=self.noise_multiplier)
        return self.noise_multiplier

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.settings.delta)

    def epsilon_after_round(self) -> float:
        """Epsilon at the job's delta once the next round's steps have run."""
        return self.accountant.epsilon_after(
            self.settings.delta,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps_per_round,
        )

    def optimizer(self, lr: float) -> PatientDPOptimizer:
        """This round's optimizer (Adam, reset every round like plain training) with clipping and noise."""
        self._optimizer = PatientDPOptimizer(
            torch.optim.Adam([p for p in self.module.parameters() if p.requires_grad], lr=lr),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            expected_batch_size=self.expected_patients,
            loss_reduction="mean",
            generator=self._noise,
        )
        return self._optimizer

    def train(self, task, *, lr: float, device: str = "cpu", **options) -> TrainResult:
        """One round of DP-SGD with the task's `sample_loss`; `options` (epochs, max_steps, should_stop,
        algorithm): see tasks.common.train_loop."""
        sample_loss = getattr(task, "sample_loss", None)
        if sample_loss is None:
            raise ValueError(
                f"task {task.__name__} exports no sample_loss: DP-SGD needs the batch loss as a mean of per-sample "
                "terms (per-sample clipping bounds one sample's influence only then); add it to the task module"
            )
        return train_loop(self.module, self.loader, lambda net, batch: sample_loss(net, batch, device), lr=lr,
                          device=device, optimizer=self.optimizer(lr), **options)  # fmt: skip

    def count_step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def set_groups(self, groups: torch.Tensor) -> None:
        if self._optimizer is None:
            raise RuntimeError("SiteDPSGD: call optimizer(lr) before iterating the batches")
        self._optimizer.groups = groups

    def noise_only_step(self) -> None:
        """An empty Poisson batch: the DP-SGD output is the noise alone, so take that step."""
        self._optimizer.zero_grad(set_to_none=True)
        for p in self.module.parameters():
            if p.requires_grad:
                p.grad_sample = p.new_zeros((0,) + tuple(p.shape))
        self._optimizer.step()
