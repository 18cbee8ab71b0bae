"""The pairing bench's bookkeeping (bench/model_pairing.py): which pairs it builds, how it pools its shares,
and that one pair's flags follow the thesis's definitions (clean pair: poison flagged = FNMR on poison;
backdoored pair: poison not flagged = FMR on poison)."""

from __future__ import annotations

from argparse import Namespace
from types import ModuleType

import numpy as np
import pytest
from helpers_experiments import load_bench_script
from scipy.stats import special_ortho_group


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_script("model_pairing")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def members(bench: ModuleType, kept: int = 2, missed: int = 1, clean: int = 3, per: int = 4) -> list:
    """base, clean fine-tunes, backdoored (each with ``per`` poisoned samples), partner: the bench's order."""
    rng = np.random.default_rng(0)
    n_bad = kept + missed
    poisoned = n_bad * per

    def member(name: str, **extra: object) -> object:
        return bench.Member(name, f"run-{name}-{rng.integers(1e9)}", rng.normal(size=(5, 3)),
                            rng.normal(size=(poisoned, 3)), **extra)  # fmt: skip

    out = [member("IResNet")]
    out += [member("IResNet'", seed=i) for i in range(clean)]
    for i in range(n_bad):
        out.append(member("IResNet(B)", seed=100 + i, set=("triggers", "locations")[i % 2], success=i < kept,
                          asr=0.9, rows=slice(i * per, (i + 1) * per)))  # fmt: skip
    out.append(member("MobileFaceNet"))
    return out


def test_every_backdoored_network_is_paired_both_ways_with_the_partner_and_clean_fine_tunes(bench) -> None:
    zoo = members(bench)
    plan = bench.plan_pairs(zoo, Namespace(seed=0, others=2))
    bad = [m for m in zoo if m.name == "IResNet(B)"]
    assert len(plan[("MobileFaceNet", "IResNet(B)", True)]) == len(bad)
    assert len(plan[("IResNet(B)", "MobileFaceNet", True)]) == len(bad)
    assert len(plan[("IResNet", "IResNet(B)", True)]) == 2 * len(bad)  # two clean fine-tunes each
    assert [len(plan[k]) for k in (("IResNet", "MobileFaceNet", False), ("MobileFaceNet", "IResNet", False))] == [1, 1]
    for ref, probe, rows in plan[("IResNet(B)", "IResNet(B)", True)]:
        assert ref is not probe and ref.success == probe.success  # a fellow of its own kind
        assert set(rows) == set(range(ref.rows.start, ref.rows.stop)) | set(range(probe.rows.start, probe.rows.stop))
    for _ref, probe, rows in plan[("MobileFaceNet", "IResNet(B)", True)]:
        assert list(rows) == list(range(probe.rows.start, probe.rows.stop))  # the backdoored member's own samples
    # the missed network has no fellow that missed too: it is never paired with a kept one
    assert all(r.success for r, _, _ in plan[("IResNet(B)", "IResNet(B)", True)])


def test_sample_groups_follow_the_set_and_the_rule(bench) -> None:
    zoo = members(bench, kept=2, missed=1, per=4)
    groups = bench.sample_groups(zoo)
    assert groups["kept"].tolist() == [True] * 8 + [False] * 4
    assert groups["triggers"].tolist() == [True] * 4 + [False] * 8
    assert groups["locations"].tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert groups["missed the rule"].tolist() == [False] * 8 + [True] * 4


def test_row_summary_pools_the_shares_over_pairs_and_filters_samples(bench) -> None:
    rates = [str(r) for r in bench.RATES]
    pairs = [
        {"samples": np.array([0, 1, 2, 3]), "flags": dict.fromkeys(rates, np.array([1, 1, 0, 0], bool)),
         "genuine_cos_mean": 0.9, "poison_cos": np.array([0.1, 0.2, 0.8, 0.9])},
        {"samples": np.array([4, 5]), "flags": dict.fromkeys(rates, np.array([1, 0], bool)),
         "genuine_cos_mean": 0.8, "poison_cos": np.array([0.3, 0.95])},
    ]  # fmt: skip
    everything = np.ones(6, bool)
    missed = bench.row_summary(pairs, everything, backdoored=True)
    assert missed["samples"] == 6 and missed["pairs"] == 2
    assert missed[rates[0]] == pytest.approx(100 * 3 / 6)  # 3 of 6 poisoned samples not flagged
    flagged = bench.row_summary(pairs, everything, backdoored=False)
    assert flagged[rates[0]] == pytest.approx(100 * 3 / 6)
    first_only = bench.row_summary(pairs, np.array([1, 1, 1, 1, 0, 0], bool), backdoored=True)
    assert first_only["pairs"] == 1 and first_only[rates[0]] == pytest.approx(50.0)
    assert first_only["poison_cos_mean"] == pytest.approx(np.mean([0.1, 0.2, 0.8, 0.9]))
    nothing = bench.row_summary(pairs, np.zeros(6, bool), backdoored=True)
    assert nothing["samples"] == 0 and nothing[rates[0]] is None


@pytest.mark.parametrize("kind", ["procrustes", "affine"])
def test_a_rotated_pair_flags_only_the_faces_one_model_moved(bench, kind: str) -> None:
    """The reference is a rotation of the probe; on the poisoned samples the probe (backdoored) answers
    with the victim's embedding instead, so the pair disagrees there and nowhere else."""
    rng = np.random.default_rng(1)
    d = 16
    rot = special_ortho_group.rvs(d, random_state=2)
    faces = unit(rng.normal(size=(700, d)))
    impostor = unit(rng.normal(size=(20, d)))
    victim = unit(rng.normal(size=(1, d)) + 0.05 * rng.normal(size=(20, d)))

    def other_model(x: np.ndarray) -> np.ndarray:  # the reference: rotated, and not quite the same model
        return unit(x @ rot.T + 0.03 * rng.normal(size=x.shape))

    probe_bad = bench.Member("IResNet(B)", "probe", faces, victim)
    probe_clean = bench.Member("IResNet", "probe-clean", faces, impostor)
    ref = bench.Member("MobileFaceNet", "ref", other_model(faces), other_model(impostor))
    fit, val = np.arange(500), np.arange(500, 700)
    samples = np.arange(20)
    bad = bench.pair_flags(ref, probe_bad, samples, kind, fit, val, steps=200, seed=0)
    clean = bench.pair_flags(ref, probe_clean, samples, kind, fit, val, steps=200, seed=0)
    for rate in map(str, bench.RATES):
        assert bad["flags"][rate].all()  # every poisoned sample caught: FMR on poison 0
        # the clean pair flags the (untouched) poisoned faces about as often as clean ones
        assert clean["flags"][rate].mean() <= float(rate) + 0.1
    assert not clean["flags"][str(bench.RATES[0])].any()
    assert clean["genuine_cos_mean"] > 0.98


def test_voting_and_both_directions_account_for_every_poisoned_sample(bench) -> None:
    zoo = members(bench, kept=2, missed=1, clean=3, per=4)
    rng = np.random.default_rng(3)
    for m in zoo:  # enough unseen faces to fit translators and calibrate them
        m.unseen = unit(rng.normal(size=(60, 3)))
    fit, val = np.arange(40), np.arange(40, 60)
    args = Namespace(steps=20, seed=0)
    vote = bench.voting(zoo, fit, val, args)
    assert vote["trios"] == 2 and vote["poisoned_samples"] == 8 and vote["clean_faces"] == 2 * 10
    for shares in vote["percent"].values():
        poison = shares["named the backdoored"] + shares["named another"] + shares["named none"]
        assert poison == pytest.approx(100.0)
    two_way = bench.both_ways(zoo, fit, val, args)
    assert [r["backdoored"] for r in two_way] == [False, True, True]
    assert len(two_way[0]["samples"]) == 8  # the clean pair sees every kept network's poison
    assert all(len(f) == len(r["samples"]) for r in two_way for f in r["flags"].values())
