"""SecureGaze on the deliberately strong toy backdoor, its generator, and its bad-input guards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from backdoorlab.defenses.securegaze import (
    SecureGaze,
    SecureGazeUnlearning,
    TriggerGenerator,
    _CleanStats,
    collapse_ratio,
    jitter,
    solid_patterns,
)
from backdoorlab.errors import BackdoorLabError, ModelContractError
from backdoorlab.geometry import angular_error_deg

from .toy_backdoor import TARGET_DEG, clean_split, target_rad, toy_model

FAST_BUDGET = 0.03
FAST = {"steps": 120, "batch_size": 32, "min_clean": 32, "device": "cpu", "saliency_strength": 0.0}
# Detection on the toy (each ~2-3 s a model), with the input-independent part of G
# only (the toy trigger is a fixed square). Measured on one torch thread, as the suite runs
# (clean vs backdoored score):
# - the paper's undirected loss from the default rectangle-screened starts (60 steps), 4x4 toy, seed 0,
#   on AVX-512, AVX2 and portable kernels (ATEN_CPU_CAPABILITY=avx2 / default): clean 0.52-0.63,
#   backdoored 1.52-1.73 (at least 0.89 apart), variance ratio 0.019-0.030, target within 0.5 deg,
#   G's largest change at rows/columns 27-28 (with the earlier 3x3 toy: 0.61 vs 0.91 on AVX-512);
# - the directed search (5 starts pulled towards far-apart clean outputs, no screened rectangles,
#   pull 1, 100 steps) is not tested on this toy: it separated the earlier 3x3 toy on the CPU it was
#   tuned on (clean 0.43/0.48/0.58 vs backdoored 0.92/0.94/1.01), but with the 4x4 toy, seed 0, it gives
#   0.46 vs 0.23 on AVX-512, 0.43 vs 0.33 on AVX2, 0.47 vs 0.77 on ATen's portable kernels and 0.51 vs
#   0.40 with MKL's reproducible mode added; lr 0.02 with 40 explore steps, or pull 3, did not help:
#   no start reaches the trigger. Its mechanics are tested below (restarts keep the best collapse).
# From P = 0 alone (the default before the screened starts) the toy is not separated: 0.51 clean vs 0.38.
TOY_DETECT = {
    "screened rectangles": {**FAST, "steps": 60, "explore_steps": 20, "input_dependent": False, "threshold": 0.85},
}  # fmt: skip


@pytest.mark.parametrize("search", list(TOY_DETECT))
def test_backdoored_toy_is_flagged_the_clean_one_not_and_the_target_is_found(search: str) -> None:
    data = clean_split(128)
    det = SecureGaze(**TOY_DETECT[search])
    clean, bd = det.inspect(toy_model(False), data), det.inspect(toy_model(True), data)
    assert bd.backdoored and not clean.backdoored, (clean.score, bd.score)
    assert bd.score > clean.score + 0.3  # measured: screened rectangles at least 0.89 apart
    assert bd.details["variance_ratio"] < 0.2  # measured 0.02-0.03 of the clean output variance (screened)
    est = torch.tensor(np.radians(bd.estimates["target_deg"]), dtype=torch.float64)
    assert float(angular_error_deg(est, target_rad().double())) < 5.0, (bd.estimates, TARGET_DEG)
    # the reversed trigger sits on the real one: G changes the bottom-right corner most
    x, _ = data.batch(np.arange(len(data)))
    generator = det.reverse(toy_model(True), data).generator  # the same search as the verdict's (seeded)
    with torch.no_grad():
        change = generator.perturbation(x).abs().mean((0, 1))
    row, col = divmod(int(change.argmax()), change.shape[1])
    assert row >= 20 and col >= 20, (row, col)  # the square covers rows/columns 25-28


def test_generator_starts_as_the_identity_and_respects_its_budget() -> None:
    x = torch.rand(4, 3, 16, 16)
    cost = torch.ones(1, 1, 16, 16)
    cost[..., :8, :] = 5.0
    g = TriggerGenerator((3, 16, 16), budget=0.02, cost=cost, width=4)
    assert torch.equal(g(x), x)
    with torch.no_grad():
        g.pattern.normal_(0, 1.0)
        for p in g.conv.parameters():
            p.normal_(0, 0.5)
    d = g.perturbation(x)
    spent = (g.cost * d.abs()).mean((1, 2, 3))
    assert torch.all(spent <= 0.02 * (1 + 1e-5))
    with torch.no_grad():
        y = g(x)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_jitter_is_seeded_and_shifts() -> None:
    x = torch.rand(2, 3, 8, 8)
    a = jitter(x, 0.1, 2, torch.Generator().manual_seed(3))
    b = jitter(x, 0.1, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(jitter(x, 0.0, 0, torch.Generator()), x)


def test_verdict_reports_the_collapse_statistics() -> None:
    v = SecureGaze(**{**FAST, "steps": 20}).inspect(toy_model(True), clean_split(64))
    d = v.details
    assert v.score == pytest.approx(-np.log10(d["variance_ratio"]))
    assert 0 < d["perturbation_l1"] <= FAST_BUDGET + 1e-6  # plain L1 within the (saliency-weighted) budget scale
    assert d["n_clean"] == 64 and d["params"]["steps"] == 20
    assert json.loads(json.dumps(v.to_json()))["method"] == "securegaze"
    assert v.examples is not None and v.examples.dtype == np.uint8 and v.examples.shape == (8, 32, 32, 3)
    assert len(v.estimates["target_deg"]) == 2 and all(np.isfinite(v.estimates["target_deg"]))


def test_inspection_is_deterministic_and_leaves_the_model_alone() -> None:
    model = toy_model(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    det = SecureGaze(**{**FAST, "steps": 5})
    a, b = det.inspect(model, clean_split(64)), det.inspect(model, clean_split(64))
    assert a.score == b.score and a.estimates == b.estimates
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_unlearning_returns_a_tuned_copy() -> None:
    from backdoorlab.defenses.tuning import FineTuneSettings

    model = toy_model(True)
    fixer = SecureGazeUnlearning(SecureGaze(**{**FAST, "steps": 10}), FineTuneSettings(epochs=1), mix=0.5)
    repaired = fixer.repair(model, clean_split(64))
    assert repaired is not model
    assert any(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), repaired.state_dict().values(), strict=True)
    )
    assert json.dumps(fixer.params()) and fixer.last_report["n_clean"] == 64


def _unlearning_batch(fixer: SecureGazeUnlearning, monkeypatch: pytest.MonkeyPatch, model: nn.Module, data):  # type: ignore[no-untyped-def]
    """The batch transform ``repair`` hands to the fine-tuning, and the generator it uses (no training run)."""
    import backdoorlab.defenses.securegaze as sg

    seen = {}

    def capture(model, task, data, settings, device, batch_transform):  # type: ignore[no-untyped-def]
        seen["transform"] = batch_transform
        return model

    monkeypatch.setattr(sg, "fine_tune", capture)
    gen = TriggerGenerator((3, 32, 32), budget=0.5, input_dependent=False)
    pattern = torch.zeros(1, 3, 32, 32)
    pattern[..., :4, :4] = 1.0  # a white corner: G(x) != x
    gen.set_pattern(pattern)
    rev = sg.ReversedTrigger(gen, 0.1, 0.1, 0.01, 1.0, 5.0, (0.0, 0.0), np.zeros((0, 32, 32, 3), np.uint8))
    fixer.repair(model, data, reversed_trigger=rev)
    return seen["transform"], gen


def test_paired_unlearning_shows_each_image_clean_with_the_models_own_gaze_and_reversed_with_the_true_gaze(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, data = toy_model(True), clean_split(64)
    fixer = SecureGazeUnlearning(SecureGaze(**FAST))  # the defaults: paired, clean targets from the model
    transform, gen = _unlearning_batch(fixer, monkeypatch, model, data)
    idx = np.arange(8)
    x, ann = data.batch(idx)
    images, out = transform(x, ann, idx)
    assert images.shape[0] == 16 and out["gaze"].shape == (16, 2)
    with torch.no_grad():
        assert torch.equal(images[:8], x) and torch.allclose(images[8:], gen(x))
        assert torch.allclose(out["gaze"][:8], model.eval()(x))  # the clean rows keep the original's outputs
    assert torch.equal(out["gaze"][8:], ann["gaze"].float())  # G(x) rows: the true gaze of x


def test_unpaired_unlearning_replaces_a_seeded_fraction_of_the_rows_and_keeps_the_true_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, data = toy_model(True), clean_split(64)
    fixer = SecureGazeUnlearning(SecureGaze(**FAST), paired=False, mix=0.5, clean_targets="label")
    transform, gen = _unlearning_batch(fixer, monkeypatch, model, data)
    idx = np.arange(64)
    x, ann = data.batch(idx)
    images, out = transform(x, ann, idx)
    assert images.shape == x.shape and torch.equal(out["gaze"], ann["gaze"].float())
    changed = (images != x).flatten(1).any(1)
    assert 16 < int(changed.sum()) < 48  # about half of the rows
    with torch.no_grad():
        assert torch.allclose(images[changed], gen(x[changed])) and torch.equal(images[~changed], x[~changed])
    again, _ = transform(x.flip(0), {k: v.flip(0) for k, v in ann.items()}, idx[::-1].copy())
    assert torch.equal((again != x.flip(0)).flatten(1).any(1), changed.flip(0))  # which rows: a function of the index
    with pytest.raises(BackdoorLabError, match="clean_targets"):
        SecureGazeUnlearning(clean_targets="teacher")


def test_bad_inputs_fail_before_work() -> None:
    with pytest.raises(BackdoorLabError, match="SecureGaze needs at least 128 clean samples; got 64"):
        SecureGaze(device="cpu").inspect(toy_model(False), clean_split(64))

    class NoSplit(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))[:, :2]

    with pytest.raises(ModelContractError, match="SecureGaze"):
        SecureGaze(**FAST).inspect(NoSplit(), clean_split(64))
    with pytest.raises(BackdoorLabError, match="budget"):
        SecureGaze(budget=0)
    with pytest.raises(BackdoorLabError, match="mix"):
        SecureGazeUnlearning(mix=0)


def test_restarts_keep_the_best_collapse_of_all_starts() -> None:
    one = SecureGaze(**{**FAST, "steps": 10, "scan_starts": 0}).inspect(toy_model(True), clean_split(64))
    two = SecureGaze(**{**FAST, "steps": 10, "restarts": 2, "scan_starts": 0}).inspect(toy_model(True), clean_split(64))
    assert two.score >= one.score  # the first start is one of the two
    with_solids = SecureGaze(**{**FAST, "steps": 10, "scan_starts": 2}).inspect(toy_model(True), clean_split(64))
    assert with_solids.score >= one.score  # the screened rectangles add starts; the start from P = 0 is kept
    with pytest.raises(BackdoorLabError, match="restarts"):
        SecureGaze(restarts=0)
    with pytest.raises(BackdoorLabError, match="pull"):
        SecureGaze(pull=-1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 40),
    st.floats(-0.5, 0.5),
    st.floats(-0.5, 0.5),
    st.floats(0.01, 0.4),
)
def test_collapse_ratio_is_zero_on_its_signature_and_charges_a_short_shift(
    n: int, dp: float, dy: float, min_shift: float
) -> None:
    clean = torch.randn(n, 2, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    var = clean.var(0)
    shift = torch.tensor([dp, dy], dtype=torch.float64)
    length = float(shift.pow(2).sum().add(1e-12).sqrt())  # the measure's own length (guarded at zero)
    # a fixed target: the outputs sit on one point, whatever the clean ones were
    assert float(collapse_ratio(shift.expand(n, 2), clean, var, "collapse", min_shift)) == pytest.approx(0, abs=1e-9)
    # unchanged outputs are as spread as the clean ones (ratio 1) and no shift at all
    assert float(collapse_ratio(clean, clean, var, "collapse", min_shift)) == pytest.approx(1)
    short = max(0.0, min_shift - 1e-6) ** 2 / float(var.mean())
    assert float(collapse_ratio(clean, clean, var, "shift", min_shift)) == pytest.approx(short, rel=1e-6, abs=1e-12)
    # a shift relabel: the change is one constant; it costs only what is missing below min_shift
    moved = float(collapse_ratio(clean + shift, clean, var, "shift", min_shift))
    assert moved == pytest.approx(max(0.0, min_shift - length) ** 2 / float(var.mean()), rel=1e-6, abs=1e-12)
    # a long enough shift with noise on it costs the noise's variance, in clean-variance units
    far = torch.tensor([min_shift + 1.0, 0.0], dtype=torch.float64)
    noise = 0.1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noisy = float(collapse_ratio(clean + far + noise, clean, var, "shift", min_shift))
    assert noisy == pytest.approx(float((noise.var(0) / var).mean()), rel=1e-6)


def test_screened_starts_search_for_a_shift_when_their_rectangle_moves_the_gaze() -> None:
    """A rectangle that adds the same amount to every output is ranked by the shift measure, not the collapse one."""

    class Linear(nn.Module):  # y = mean brightness of the bottom-right quarter, times 2, on both outputs
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(1, 2)
            nn.init.constant_(self.head.weight, 2.0)
            nn.init.zeros_(self.head.bias)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 16:, 16:].mean((1, 2, 3))[:, None] + 0.0 * x.mean()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    x = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    model = Linear().eval()
    with torch.no_grad():
        y = model(x)
    # budget 0.05: the square adds 0.2 to every pixel it covers, never clamped, so the outputs move by 0.4 rad
    both = {"signatures": ["collapse", "shift"], "min_shift_deg": 5.0}
    det = SecureGaze(**{**FAST, **both, "scan_starts": 1, "budget": 0.05, "scan_shapes": [[0.5, 0.5]]})
    ((pattern, signature, _),) = det._scan_solids(model, x, _CleanStats(y, y.var(0), y.var(0)), None)
    assert signature == "shift"  # a linear model moves every output by the same amount: no collapse
    assert float(pattern[..., 16:, 16:].sum()) > 0  # a white square where the model looks
    only_collapse = SecureGaze(**{**FAST, "scan_starts": 1, "signatures": ["collapse"]})
    assert only_collapse._scan_solids(model, x, _CleanStats(y, y.var(0), y.var(0)), None)[0][1] == "collapse"
    with pytest.raises(BackdoorLabError, match="signatures"):
        SecureGaze(signatures=["tilt"])
    with pytest.raises(BackdoorLabError, match="min_shift_deg"):
        SecureGaze(min_shift_deg=0)


def test_a_pattern_only_start_has_no_convolutional_part_and_the_identity_start_keeps_it() -> None:
    det = SecureGaze(**{**FAST, "scan_pattern_only": True})
    x = torch.rand(8, 3, 32, 32)
    y = torch.randn(8, 2)
    clean = _CleanStats(y, y.var(0), y.var(0))
    rng = np.random.default_rng(0)
    screened = det._start(toy_model(False), x, clean, None, 1, y.mean(0), rng, torch.zeros(1, 3, 32, 32))
    identity = det._start(toy_model(False), x, clean, None, 0, y.mean(0), rng)
    assert not screened.gen.input_dependent and identity.gen.input_dependent


def test_solid_patterns_paint_one_black_or_white_rectangle_on_a_half_overlapping_grid() -> None:
    squares = solid_patterns((3, 20, 20), (0.2, 0.2))  # side 4, stride 2: 9 x 9 places, 2 colours
    assert len(squares) == 9 * 9 * 2
    bars = solid_patterns((3, 20, 20), (0.1, 0.3))  # 2 x 6, strides 1 and 3: 19 x 5 places
    assert len(bars) == 19 * 5 * 2
    for pattern, (row, col, height, width, colour) in squares + bars:
        assert pattern.shape == (1, 3, 20, 20)
        inside = pattern[..., row : row + height, col : col + width]
        assert torch.all(inside == colour) and int((pattern != 0).sum()) == 3 * height * width
    assert {place[2:4] for _, place in bars} == {(2, 6)}
    assert {place[4] for _, place in squares} == {1, -1}
    x = torch.full((1, 3, 20, 20), 0.5)
    pattern, (row, col, height, width, colour) = bars[1]
    painted = (x + pattern).clamp(0, 1)
    assert torch.all(painted[..., row : row + height, col : col + width] == (1.0 if colour > 0 else 0.0))


def test_screened_rectangles_overlap_only_when_they_intersect_in_the_same_colour() -> None:
    from backdoorlab.defenses.securegaze import _overlap

    bar, square = (10, 0, 2, 12, 1), (8, 10, 4, 4, 1)
    assert _overlap(bar, square) and _overlap(square, bar)  # the bar's right end runs into the square
    assert not _overlap(bar, (8, 12, 4, 4, 1))  # just right of the bar's end
    assert not _overlap(bar, (12, 0, 4, 4, 1))  # just below it
    assert not _overlap(bar, (*square[:4], -1))  # a black rectangle is another start, wherever it is


def test_a_screened_start_lies_on_the_toy_trigger() -> None:
    """The gradient-free screen alone puts a start on the toy's white 3x3 square (rows/columns 26-28 of 32).

    Measured: the best rectangle (ratio 0.07) is a white bar across the trigger (rows 26-28,
    columns 20-29); the second (0.26), a square nearer the centre, half-fires the backdoor.
    Clean toy: 0.44 at best.
    """
    det = SecureGaze(**{**FAST, "scan_starts": 2, "signatures": ["collapse"]})
    model, data = toy_model(True), clean_split(128)
    x, _ = data.batch(np.arange(len(data)))
    with torch.no_grad():
        y = model(x)
        starts = det._scan_solids(model, x, _CleanStats(y, y.var(0), y.var(0)), None)
    assert len(starts) == 2 and not torch.equal(starts[0][0], starts[1][0])  # two different places

    def covers_trigger(pattern: torch.Tensor) -> bool:
        rows, cols = torch.nonzero(pattern[0, 0] > 0, as_tuple=True)  # white rectangles only: the trigger is white
        return bool(len(rows)) and rows.max() >= 26 and rows.min() <= 28 and cols.max() >= 26 and cols.min() <= 28

    on_trigger = [mean for pattern, _, mean in starts if covers_trigger(pattern)]
    assert on_trigger, [torch.nonzero(p[0, 0]).min(0).values.tolist() for p, _, _ in starts]
    # that rectangle already drives the outputs towards the attacker's target: the start for the pull
    est = on_trigger[0].double()
    clean_mean = model(x).mean(0).detach().double()
    target = target_rad().double()
    assert float(angular_error_deg(est, target)) < float(angular_error_deg(clean_mean, target))


def test_scan_settings_are_validated() -> None:
    bad_shapes = ([[0.0, 0.2]], [[0.2, 1.5]], [[0.2]], "bar", [[0.2, "wide"]])
    bad_settings = (
        {"scan_starts": -1},
        {"scan_images": 1},
        {"scan_shapes": []},
        *({"scan_shapes": b} for b in bad_shapes),
    )
    for bad in bad_settings:
        with pytest.raises(BackdoorLabError, match="scan_"):
            SecureGaze(**bad)  # type: ignore[arg-type]
