"""The quantised HE packing (he/quant.py): integers packed several per CKKS slot. Pure math on plain arrays
(exact round trip, a sum over max_sites sites without digit overflow, unbiased stochastic rounding), the
settings' refusals, and with real TenSEAL: the decrypted packed sum equals the weighted mean within the bound."""

import numpy as np
import pytest
import tenseal as ts

from consortium.config import ConfigError
from consortium.he import ckks, quant
from consortium.he.contexts import make_contexts
from consortium.he.quant import Packing
from consortium.he.wire import EncryptedSum, EncryptedUpdate
from consortium.jobs.spec import HESettings, JobSpec

PACKINGS = [Packing(8, 4), Packing(6, 4), Packing(10, 3), Packing(12, 2), Packing(4, 64)]


@pytest.fixture(scope="module")
def contexts():
    """(server, client) under the kits' CKKS parameters; the server's has no secret key."""
    server, client = make_contexts(8192, [60, 40, 40], 40)
    return ts.context_from(server), ts.context_from(client)


@pytest.mark.parametrize("packing", PACKINGS, ids=str)
def test_pack_unpack_round_trip_is_exact(packing):
    rng = np.random.default_rng(0)
    q = rng.integers(-packing.qmax, packing.qmax + 1, 10_001)
    q[:4] = [packing.qmax, -packing.qmax, 0, packing.qmax]
    slots = quant.pack(q, packing.base, packing.per_slot)
    assert slots.size == -(-q.size // packing.per_slot)
    assert np.abs(np.ldexp(slots, quant.FRACTION_BITS)).max() < 2.0**quant.LIMIT_BITS  # what a slot holds exactly
    np.testing.assert_array_equal(quant.unpack(slots, packing.base, packing.per_slot, q.size), q)


@pytest.mark.parametrize("packing", PACKINGS, ids=str)
def test_sum_over_max_sites_never_overflows_a_digit(packing):
    rng = np.random.default_rng(1)
    n = packing.max_sites
    sites = [rng.integers(-packing.qmax, packing.qmax + 1, 4_000) for _ in range(n)]
    sites[0][:10], sites[-1][10:20] = packing.qmax, -packing.qmax
    extreme_up = [np.full(50, packing.qmax) for _ in range(n)]  # every digit at its largest sum
    extreme_down = [np.full(50, -packing.qmax) for _ in range(n)]
    for group in (sites, extreme_up, extreme_down):
        total = sum(quant.pack(q, packing.base, packing.per_slot) for q in group)  # what the server's sum holds
        got = quant.unpack(total, packing.base, packing.per_slot, group[0].size)
        np.testing.assert_array_equal(got, sum(group))


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 2_000)
    step = np.full(x.size, 1 / 127)
    draws = np.stack([quant.quantise(x, step, 127, rng)[0] for _ in range(2_000)])
    assert np.abs(draws - x / step).max() < 1  # every draw is one of the two neighbouring integers
    # the mean of 2000 draws of a Bernoulli fraction: std <= 0.5 / sqrt(2000) = 0.011 steps
    assert np.abs(draws.mean(axis=0) - x / step).max() < 0.06
    assert abs(float((draws.mean(axis=0) - x / step).mean())) < 0.002  # no bias over all values


def test_values_beyond_the_range_are_clipped_and_counted():
    q, clipped = quant.quantise(np.array([0.5, 2.0, -3.0]), np.full(3, 1 / 7), 7, np.random.default_rng(0))
    assert clipped == 2 and q[1] == 7 and q[2] == -7


def test_ranges_come_from_the_reference_with_a_floor_for_zero_layers():
    assert quant.ranges([np.array([0.1, -0.4]), np.zeros(3)], margin=2.0) == [0.8, quant.MIN_RANGE]
    assert quant.ranges([np.zeros(1), np.array([500])], margin=2.0, least=[127.0, 127.0]) == [127.0, 1000.0]  # counts


def test_packing_settings_are_checked():
    for bad, match in [
        ({"bits": 1}, "he.bits: 1 is out of range"),
        ({"bits": 17}, "he.bits: 17 is out of range"),
        ({"max_sites": 0}, "he.max_sites"),
        ({"max_weight": 0.0}, "he.max_weight"),
        ({"margin": 0.5}, "he.margin"),
        ({"bits": 16, "max_sites": 100_000_000}, "more than the 42 bits a CKKS slot holds"),
    ]:
        with pytest.raises(ValueError, match=match):
            Packing(**bad)
    for bad, match in [
        ({"pack": "zip"}, "he.pack: 'zip'"),
        ({"bits": 8}, "apply only with pack: quantised"),
        ({"pack": "quantised", "bits": 8.5}, "he.bits: expected a whole number"),
        ({"pack": "quantised", "bits": 20}, "he.bits: 20 is out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            HESettings.from_dict(bad)
    settings = HESettings.from_dict({"pack": "quantised", "bits": 10, "max_sites": 3})
    assert HESettings.from_dict(settings.to_dict()) == settings  # the simulator worker's copy reads back
    assert HESettings().to_dict() == {"encrypt_layers": None}  # the ckks packing exports as before


def _spec(**changes) -> JobSpec:
    base = {"name": "q", "purpose": "p", "agreement": "1", "weighting": "uniform"}
    return JobSpec(**{**base, **changes})


def test_a_job_that_could_overflow_the_headroom_is_refused_at_load(tmp_path):
    job = tmp_path / "job.yaml"
    with pytest.raises(ConfigError, match=r"job.yaml: field 'he.max_sites': 2 is below min_clients 3"):
        _spec(min_clients=3, he={"pack": "quantised", "max_sites": 2}).validate(job)
    with pytest.raises(ConfigError, match=r"field 'he.max_weight': 1.0 is below .* weighting: steps \(local_steps 12"):
        _spec(weighting="steps", local_steps=12, he={"pack": "quantised"}).validate(job)
    with pytest.raises(ConfigError, match=r"field 'he.max_weight'.*weighting: samples"):
        _spec(weighting="samples", he={"pack": "quantised"}).validate(job)
    _spec(weighting="steps", local_steps=12, he={"pack": "quantised", "max_weight": 12}).validate(job)


def _site_models(n: int, seed: int = 3) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    reference = {"conv.weight": rng.normal(0, 0.1, (16, 8, 3, 3)), "bn.bias": np.zeros(16),
                 "head": rng.normal(0, 1, 9000)}  # fmt: skip
    sites = [{k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in reference.items()} for _ in range(n)]
    return reference, sites


@pytest.mark.parametrize("packing, weights", [(Packing(8, 4, max_weight=4.0), [1, 2, 4]), (Packing(6, 8), [1] * 8)],
                         ids=["8bit-weighted", "6bit-8sites"])  # fmt: skip
def test_decrypted_packed_sum_is_the_weighted_mean_within_the_bound(contexts, packing, weights):
    """Real TenSEAL: every site quantises, packs and encrypts; the server adds ciphertexts under its public context;
    a site decrypts. The integers come back exactly (the CKKS error stays below half a unit of the packed number),
    so the only error is quantisation: each site's value is off by less than one step, scaled by its weight share:
    |error| < sum_i step x max_weight / total weight = n x step x max_weight / W."""
    server, client = contexts
    reference, sites = _site_models(len(weights))
    total, integers = EncryptedSum(server), 0
    for seed, (params, w) in enumerate(zip(sites, weights, strict=True)):
        update, clipped = EncryptedUpdate.encrypt_quantised(
            client, params, weight=w, packing=packing, reference=reference, rng=np.random.default_rng(seed)
        )
        assert clipped == 0
        total.add(EncryptedUpdate.decode(update.encode(), f"site-{seed}"))
        flat, layout = ckks.flatten(params, list(params))
        sizes = [int(np.prod(s)) for _, s in layout.layers]
        step = quant.steps(list(update.ranges), sizes, packing.qmax)
        q, _ = quant.quantise(flat * (w / packing.max_weight), step, packing.qmax, np.random.default_rng(seed))
        integers = integers + q
    result = EncryptedUpdate.decode(total.result().encode(), "the server")
    assert result.sites == len(weights) and result.weight == sum(weights)

    slots = ckks.decrypt(client, list(result.chunks), -(-layout.size // packing.per_slot)) / ckks.level_factor(client)
    np.testing.assert_array_equal(quant.unpack(slots, packing.base, packing.per_slot, layout.size), integers)

    got = result.decrypt(client)
    W = sum(weights)
    for name, ref in reference.items():
        mean = sum(w * p[name].astype(np.float64) for p, w in zip(sites, weights, strict=True)) / W
        rng_ = quant.ranges([ref], packing.margin)[0]
        bound = len(weights) * rng_ / packing.qmax * packing.max_weight / W
        err = np.abs(got[name] - mean).max()
        print(f"{packing} {name}: max error {err:.3g}, bound {bound:.3g}")
        assert err < bound


def test_sum_refuses_more_sites_than_the_headroom_and_other_ranges(contexts):
    server, client = contexts
    reference, sites = _site_models(3)
    packing = Packing(8, 2)
    total = EncryptedSum(server)
    for params in sites[:2]:
        total.add(EncryptedUpdate.encrypt_quantised(client, params, weight=1, packing=packing, reference=reference)[0])
    third = EncryptedUpdate.encrypt_quantised(client, sites[2], weight=1, packing=packing, reference=reference)[0]
    with pytest.raises(ValueError, match="site-c: more than he.max_sites = 2 site updates"):
        total.add(third, "site-c")
    other = EncryptedSum(server)
    other.add(EncryptedUpdate.encrypt_quantised(client, sites[0], weight=1, packing=packing, reference=reference)[0])
    own_ranges = EncryptedUpdate.encrypt_quantised(client, sites[1], weight=1, packing=packing)[0]  # no reference
    with pytest.raises(ValueError, match="site-b sent an update packed differently"):
        other.add(own_ranges, "site-b")
    with pytest.raises(ValueError, match="weight 2 exceeds he.max_weight 1.0"):
        EncryptedUpdate.encrypt_quantised(client, sites[0], weight=2, packing=packing, reference=reference)


def test_ckks_error_at_the_last_level_stays_below_half_a_unit_of_the_packed_number(contexts):
    """The precision the packing relies on: 16 sites' values filling the last level (|sum| up to 2^18), added
    under the server's context and decrypted with TenSEAL's scale factor divided out, err by less than half a
    unit (2^-FRACTION_BITS / 2), so rounding recovers every packed integer. Measured on 2026-12-07: 3.8e-8."""
    server, client = contexts
    rng = np.random.default_rng(4)
    values = [rng.uniform(-(2.0**18) / 16, 2.0**18 / 16, 4096) for _ in range(16)]
    total = None
    for v in values:
        vector = ts.ckks_vector_from(server, ckks.serialize(ckks.encrypt_low(client, v))[0])
        total = vector if total is None else total + vector
    decrypted = np.asarray(ts.ckks_vector_from(client, total.serialize()).decrypt()) / ckks.level_factor(client)
    err, half_unit = float(np.abs(decrypted - sum(values)).max()), 2.0**-quant.FRACTION_BITS / 2
    print(f"CKKS error of a 16-site sum at the last level: {err:.2g} (half a unit: {half_unit:.2g})")
    assert err < half_unit
