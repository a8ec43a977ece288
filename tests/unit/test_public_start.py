"""The public start: a trusted state dict loads into the job's model, anything else is refused by name."""

import pytest
import torch

from consortium.config import load_site_configs
from consortium.public_start import load_pretrained
from tests.conftest import REPO


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))


def test_a_fitting_state_dict_loads_exactly(tmp_path):
    source, target = _model(), _model()
    torch.save(source.state_dict(), tmp_path / "start.pt")
    load_pretrained(target, tmp_path / "start.pt")
    pairs = zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_tensor(tmp_path):
    wrong = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    model = _model()
    before = [t.clone() for t in model.state_dict().values()]
    refusal = r"pretrained: .*wrong.pt does not fit the job's model: .*0.weight \(5, 4\) vs \(3, 4\)"
    with pytest.raises(ValueError, match=refusal):
        load_pretrained(model, tmp_path / "wrong.pt")
    pairs = zip(before, model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # nothing half-loaded
    torch.save({"0.weight": torch.zeros(3, 4)}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="3 missing"):
        load_pretrained(model, tmp_path / "partial.pt")


def test_missing_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_pretrained(_model(), tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        load_pretrained(_model(), tmp_path / "text.pt")


def test_the_public_cohort_differs_from_every_hospital():
    public = load_site_configs(REPO / "public_cohort")
    hospitals = load_site_configs(REPO / "site_configs")
    assert len(public) == 2
    for archive in public.values():
        p = archive.synthetic
        for hospital in hospitals.values():
            h = hospital.synthetic
            assert (p.manufacturer, p.institution) != (h.manufacturer, h.institution)
            assert p.hu_offset != h.hu_offset and p.noise_hu != h.noise_hu
            assert p.lesion_contrast_hu != h.lesion_contrast_hu and p.prevalence != h.prevalence
