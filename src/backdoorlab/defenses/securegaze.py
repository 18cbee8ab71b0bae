"""SecureGaze: reverse-engineer a gaze backdoor's trigger function with a generator, detect, unlearn.

Idea (SecureGaze, SenSys 2025; DRMGuard before it; see docs/design/securegaze.md): a
backdoored regression model has a trigger function A such that, for every input x, the
outputs ``H(F(A(x)))`` collapse onto one target and the features ``F(A(x))`` sit at the
same angle to the head's weight rows (the backdoor activates all features together).
The defender trains an image-to-image generator G on clean inputs to produce exactly
those two signatures while G(x) stays within a small perturbation budget of x. If a
*small* change of the input collapses the outputs, the model has a shortcut no clean
gaze model has: it is flagged, and the collapse point is the estimated attacker target.

Loss per batch of clean images x (clean-set normalisers make both terms unit-free; 1
means "as spread as on clean data")::

    L = mean_j Var(y_j(G x)) / Var_clean(y_j)  +  lambda_feat * mean_j Var(theta_j(G x)) / Var_clean(theta_j)

with ``theta_j`` the angle between the feature vector and row j of the head. Optionally
(``pull`` > 0, with ``restarts``) a third term ``pull * mean_j (mean(y_j) - t_j)^2 / Var_clean(y_j)``
pulls the outputs towards a learnt collapse point t started at a different clean output per
start: the variance loss alone has no direction, and on the tests' toy backdoor (a
target far from every clean output, a trigger whose detector is silent at clean inputs)
no undirected start reaches the trigger.

How this differs from the paper, and why (each measured on the gaze zoo, see the README):

- **Hard budget instead of an L1 weight.** G's perturbation is rescaled per image so that
  its (saliency-weighted) mean absolute change never exceeds ``budget``. The question
  asked of every model is then the same — how far can the outputs be collapsed within
  this budget? — and no weight has to be balanced against the collapse terms.
- **A learned input-independent image in G** (``x + conv(x) + P``). A purely
  convolutional generator cannot put a patch at a fixed place in a uniform background:
  on the zoo it never found the corner-patch trigger. ``P`` can.
- **Starts screened from solid rectangles** (``scan_starts``, ``scan_shapes``). Besides the
  start from ``P = 0``, the search starts from the few black or white squares or bars that,
  painted within the budget, collapse the outputs most (screened without gradients). A zoo
  patch or sticker trigger fits well within the budget and collapses its model to 0.001-0.01
  of the clean output variance, yet gradient descent from ``P = 0`` settles on a dense
  adversarial perturbation; from a rectangle near the trigger it finds the trigger. Clean
  models gain nothing from it (no rectangle collapses them nearly as far as the dense
  perturbation from ``P = 0`` does), backdoored ones found from no other start do (the
  random-location patch, the tape stickers).
- **Saliency-weighted budget** (our substitute for DRMGuard's momentum-based
  transformation reversing, whose equations are not published): every gaze model,
  clean or not, can be collapsed by repainting the irises, a natural shortcut.
  Perturbing pixels where the clean model's output gradient is large costs up to
  ``1 + saliency_strength`` times more budget, so G has to find a shortcut elsewhere.

Score: ``-log10`` of the held-out output-variance ratio reached within the budget
(higher = more collapsed = more suspicious). The threshold is calibrated on reference
clean models with :meth:`SecureGaze.fit`, or fixed (``threshold``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from backdoorlab.attacks.adaptive import feature_head_angles
from backdoorlab.data.arrays import ArrayDataset, tensor_to_images
from backdoorlab.defenses.base import Detector, Mitigator, Needs, Verdict
from backdoorlab.defenses.neural_cleanse import initial_targets
from backdoorlab.defenses.registration import register_defence
from backdoorlab.defenses.settings import DefenceConfig
from backdoorlab.defenses.tuning import FineTuneSettings, fine_tune
from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import pitchyaw_to_vector, vector_to_pitchyaw
from backdoorlab.metrics.attack import target_spread_deg
from backdoorlab.tasks.gaze import GazeTask
from backdoorlab.training import pick_device

Tensor = torch.Tensor


def saliency_map(model: nn.Module, images: Tensor, blur: int = 5) -> Tensor:
    """(1, 1, H, W) in [0, 1]: where the model's outputs react most to the input, on average.

    Mean over images of ``|d(sum of outputs)/dx|`` summed over channels, box-blurred so a
    perturbation cannot slip between salient pixels.
    """
    x = images.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None
    sal = x.grad.abs().sum(1, keepdim=True).mean(0, keepdim=True)
    sal = nn.functional.avg_pool2d(sal, blur, stride=1, padding=blur // 2)
    return (sal / sal.max().clamp_min(1e-12)).detach()


Signature = Literal["collapse", "shift"]
SCAN_CHUNK = 16  # screened rectangles painted and passed through the model together


def collapse_ratio(
    outputs: Tensor, clean_outputs: Tensor, clean_var: Tensor, signature: Signature, min_shift: float
) -> Tensor:
    """How far ``outputs`` (on G(x)) show a backdoor's signature, in units of the clean output variance (0 = perfectly).

    * ``collapse`` (a fixed-target relabel): ``mean_j Var(y_j) / Var_clean(y_j)``, the outputs
      themselves sit on one point.
    * ``shift`` (a shift relabel, y -> y + s): the *change* ``d = y - y(x)`` is what is
      constant, so ``mean_j Var(d_j) / Var_clean(y_j)``, plus the squared shortfall of the
      mean change's length below ``min_shift`` (radians) over the mean clean variance. Why
      the shortfall: G = identity makes the change constant (zero) for free; a shift only
      counts when it moves the gaze by at least ``min_shift``, and charging what is missing
      as variance keeps the measure continuous for the optimiser.

    ``clean_outputs`` are the model's outputs on the same images without G (used by ``shift`` only).
    """
    if signature == "collapse":
        return (outputs.var(0) / clean_var).mean()
    change = outputs - clean_outputs
    length = change.mean(0).pow(2).sum().add(1e-12).sqrt()
    shortfall = torch.relu(min_shift - length)
    return (change.var(0) / clean_var).mean() + shortfall**2 / clean_var.mean()


def jitter(images: Tensor, noise: float, shift: int, gen: torch.Generator) -> Tensor:
    """Gaussian pixel noise and a random translation (one per batch), to reject adversarial perturbations.

    Why: small gaze models are adversarially fragile, so a high-frequency universal
    perturbation collapses the outputs of *clean* models within any useful budget. Such
    perturbations do not survive a little noise and a shift of a few pixels; a trigger
    the model was trained on does (it was learned as a robust feature). Optimising and
    scoring the generator through this jitter keeps the search on robust shortcuts.
    """
    if shift:
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
        images = torch.roll(images, (dy, dx), dims=(2, 3))
    if noise:
        images = images + noise * torch.randn(images.shape, generator=gen).to(images.device)
    return images


def solid_patterns(
    shape: tuple[int, int, int], size: tuple[float, float]
) -> list[tuple[Tensor, tuple[int, int, int, int, int]]]:
    """Additive images that paint one solid black or white rectangle, on a grid of half-overlapping places.

    ``size`` is the rectangle's (height, width) as fractions of the image's height and
    width. Each entry is ``(pattern, (row, col, height, width, colour))`` with ``pattern``
    of shape (1, C, H, W): +1 (white) or -1 (black) inside the rectangle, 0 elsewhere;
    added to an image and clamped, it paints the rectangle. Used to screen starts for the
    generator's input-independent image ``P``.
    """
    c, h, w = shape
    rh, rw = (max(1, min(n, round(f * n))) for f, n in zip(size, (h, w), strict=True))
    out = []
    for i in range(0, h - rh + 1, max(1, rh // 2)):
        for j in range(0, w - rw + 1, max(1, rw // 2)):
            for colour in (1, -1):
                pat = torch.zeros(1, c, h, w)
                pat[..., i : i + rh, j : j + rw] = float(colour)
                out.append((pat, (i, j, rh, rw, colour)))
    return out


def _overlap(a: tuple[int, int, int, int, int], b: tuple[int, int, int, int, int]) -> bool:
    """Whether two ``(row, col, height, width, colour)`` rectangles of the same colour intersect."""
    return a[4] == b[4] and a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


class TriggerGenerator(nn.Module):
    """G(x) = clamp(x + d(x), 0, 1), with d = conv(x) + P rescaled into a per-image budget.

    ``conv`` (an encoder-decoder, last layer zero-initialised) gives input-dependent
    changes (blends, warps); ``P`` (a free image, zero-initialised) gives changes at fixed
    places (patches). Both start at zero, so G starts as the identity. ``cost`` weights
    the per-pixel budget (saliency); the weighted mean |d| is at most ``budget``.
    """

    def __init__(
        self, shape: tuple[int, int, int], budget: float, cost: Tensor | None = None, width: int = 16,
        input_dependent: bool = True, pattern_resolution: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_dependent = input_dependent
        c, h, w = shape
        self.size = (h, w)
        act = nn.LeakyReLU(0.2)
        self.conv = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), act,
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), act,
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), act,
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), act,
            nn.Conv2d(width, c, 3, padding=1),
        )  # fmt: skip
        last = self.conv[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        r = pattern_resolution
        self.pattern = nn.Parameter(torch.zeros(1, c, h, w) if r is None else torch.zeros(1, c, r, r))
        self.budget = budget
        self.register_buffer("cost", torch.ones(1, 1, h, w) if cost is None else cost / cost.mean())

    @torch.no_grad()
    def set_pattern(self, image: Tensor) -> None:
        """Start ``P`` at a full-resolution (1, C, H, W) image (area-averaged onto P's grid when it is coarser)."""
        p = self.pattern
        if image.shape[-2:] != p.shape[-2:]:
            image = nn.functional.adaptive_avg_pool2d(image, p.shape[-2:])
        p.copy_(image.to(p.device))

    def perturbation(self, x: Tensor) -> Tensor:
        p = self.pattern
        if p.shape[-2:] != self.size:
            p = nn.functional.interpolate(p, size=self.size, mode="bilinear", align_corners=False)
        d = p.expand(x.shape[0], -1, -1, -1)
        if self.input_dependent:
            d = d + self.conv(x)
        spent = (self.cost * d.abs()).mean((1, 2, 3), keepdim=True)
        return d * torch.clamp(self.budget / spent.clamp_min(1e-12), max=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.perturbation(x)).clamp(0, 1)


@dataclass
class ReversedTrigger:
    """What the optimisation found for one model: the generator and its statistics on held-out images."""

    generator: TriggerGenerator
    variance_ratio: float  # collapse_ratio of the signature found, on held-out clean images
    angle_variance_ratio: float  # the same for the feature-head angles
    perturbation_l1: float  # plain mean |G(x) - x| on held-out images
    output_spread_deg: float
    clean_output_spread_deg: float
    target_deg: tuple[float, float]
    examples: np.ndarray
    signature: Signature = "collapse"  # which backdoor signature the chosen start looked for
    shift_deg: tuple[float, float] = (0.0, 0.0)  # mean change of the outputs under G (pitch, yaw), degrees


_Fraction = Annotated[float, Field(gt=0, le=1)]


class SecureGazeConfig(DefenceConfig):
    """The settings of :class:`SecureGaze` (see its docstring for what each one does and why)."""

    steps: int = Field(200, ge=1)
    restarts: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(5e-3, gt=0, allow_inf_nan=False)
    width: int = Field(16, ge=1)
    input_dependent: bool = True
    pattern_resolution: int | None = Field(None, ge=1)
    budget: float = Field(0.03, gt=0, allow_inf_nan=False)
    saliency_strength: float = Field(20.0, ge=0, allow_inf_nan=False)
    lambda_feat: float = Field(1.0, ge=0, allow_inf_nan=False)
    pull: float = Field(0.0, ge=0, allow_inf_nan=False)
    target_lr: float = Field(0.02, gt=0, allow_inf_nan=False)
    explore_steps: int = Field(20, ge=1)
    signatures: list[Signature] = Field(default_factory=lambda: ["collapse"], min_length=1)
    min_shift_deg: float = Field(8.0, gt=0, allow_inf_nan=False)
    scan_starts: int = Field(3, ge=0)
    scan_shapes: list[tuple[_Fraction, _Fraction]] = Field(default_factory=lambda: [(0.2, 0.2), (0.1, 0.3), (0.3, 0.1)])
    scan_images: int = Field(32, ge=2)
    scan_pattern_only: bool = False
    jitter_noise: float = Field(0.0, ge=0, allow_inf_nan=False)
    jitter_shift: int = Field(0, ge=0)
    threshold: float = Field(2.0, allow_inf_nan=False)
    holdout: float = Field(0.5, gt=0, lt=1)
    min_clean: int = Field(128, ge=1)
    n_examples: int = Field(8, ge=0)
    seed: int = 0


@register_defence(SecureGazeConfig)
class SecureGaze(Detector):
    """Flag gaze models whose outputs collapse under a small, learned input transformation.

    Args:
        steps: optimisation steps of the generator (of the start that is continued, exploration included).
            200 with ``explore_steps=20``: on the zoo the same AUROC and targets as 300 and 30 (scores moved
            by at most 0.28, clean ones by at most 0.06), in 0.40x instead of 0.59x a model's training time.
        restarts: starts of the optimisation, each with its own seed and initial collapse point (the mean
            clean output, then far-apart clean outputs, as Neural Cleanse's target restarts). Every start runs
            ``explore_steps``; the one that collapses the held-out images most continues to ``steps``, so the
            score is the best over starts. Why: from one start the search settles on the collapse nearest to
            it, which on a small or fragile model is an adversarial one; a backdoor target far from the clean
            mean is only reached from a start near it, and only when ``pull`` > 0 gives starts a direction.
            Costs ``(restarts - 1) * explore_steps`` extra steps; calibrate thresholds with the same setting.
        batch_size: clean images per step (variances need a few dozen).
        lr: Adam learning rate of the generator.
        width: generator base channels.
        input_dependent: whether G has its convolutional, input-dependent part (else a universal perturbation).
        pattern_resolution: side of the grid the input-independent image P lives on (bilinearly upsampled);
            a coarse grid cannot express high-frequency adversarial noise. None = full resolution.
        budget: per-pixel mean absolute change allowed (images in [0, 1]), saliency-weighted.
        saliency_strength: the most salient pixels cost ``1 + strength`` times more budget; 0 = plain L1.
        lambda_feat: weight of the feature-angle variance term (0 = output term only).
        pull: weight of ``|mean output - t|^2`` (clean-variance units), t a learnt collapse point started per
            restart. 0 = the paper's undirected variance loss, the default. With ``pull=1, restarts=4,
            explore_steps=40`` (and no screened rectangles) the zoo's fixed-target AUROC went from 0.87 to 0.93,
            about the run-to-run spread of single models, at 0.42x instead of 0.32x a model's training
            time (design note, section 9); the screened rectangles did more. On the tests' toy backdoor, whose
            target is far from every clean output, either a pull with restarts or the screened rectangles is needed.
        target_lr: Adam learning rate of t (radians).
        explore_steps: steps every start runs before the best one is chosen (when there are several starts).
        signatures: the backdoor signatures the screened starts look for (:func:`collapse_ratio`):
            "collapse" (a fixed target: the outputs on G(x) sit on one point) and "shift" (a shift
            relabel: the change y(G x) - y(x) is one constant of length at least ``min_shift_deg``).
            Why a shift measure: a shift relabel does not collapse the outputs at all (the zoo's shift
            model scored like a clean one under the collapse measure alone), while its change does.
            Each screened rectangle is ranked by the better of the two, and the start it seeds
            optimises that one; the starts from the identity look for a collapse (a shift from the
            identity has no direction yet). The score is the chosen start's measure. Default: the
            collapse alone. Measured (docs/defences/securegaze.md, hardening): the shift measure did
            not find the two partly learned shift triggers it was tried on, because a universal
            perturbation moves a nearly linear clean model's outputs by a nearly constant amount too.
        min_shift_deg: the smallest mean change (degrees of gaze) that counts as a shift.
        scan_starts: extra starts whose ``P`` begins as a solid black or white rectangle: the ``scan_starts``
            rectangles (every size in ``scan_shapes``, on a grid of half-overlapping places, both colours)
            that collapse the outputs most, as painted by G within the budget, screened without gradients.
            Why: a patch or sticker trigger fits easily within the budget (it collapses a backdoored zoo
            model's outputs to a variance ratio of 0.001-0.01), yet the gradient search from ``P = 0``
            settles on a dense adversarial perturbation instead; a rectangle painted near the trigger is
            already a partial trigger, so the search starts inside its basin. The zoo's random-location patch
            model, never found from ``P = 0``, collapses to a ratio below 0.001 under a white square anywhere
            on the face. Costs one forward pass of ``scan_images`` images per rectangle (642 of them at 64x64
            with the default shapes) and ``explore_steps`` per start.
        scan_shapes: (height, width) of the screened rectangles, as fractions of the image's height and width
            (stride: half of each side). The default: a square and a bar in both orientations. Why bars: the
            zoo's tape stickers (a strip about 3x wider than high) collapse their models to a variance ratio
            of 0.000-0.002 under a white 0.1 x 0.3 bar on the forehead or cheek, against 0.09-0.26 under the
            best square; on clean zoo models no rectangle gets below 0.36 (probe in the design note, section 9).
        scan_images: clean images (from the optimisation part) each rectangle is screened on.
        scan_pattern_only: the screened starts' G is ``P`` alone (no convolutional part), explored and, if
            chosen, continued that way. Why: a start from a rectangle looks for a trigger at a fixed place,
            which ``P`` expresses by itself, and a step without the convolutional part costs about half, so
            twice as many rectangles can be explored in the same time. The start from the identity keeps it.
        jitter_noise: std of the Gaussian noise added to G(x) before the model (optimisation and score).
        jitter_shift: largest random translation (pixels) applied to G(x) before the model.
        threshold: score threshold (``-log10`` of the variance ratio); :meth:`fit` calibrates it.
        holdout: fraction of the clean set kept out of the optimisation and used for the score.
        min_clean: smallest clean set accepted.
        n_examples: reversed-trigger images kept in the verdict.
        seed: generator initialisation and batch order.
        device: "auto", "cpu" or "cuda".
    """

    name = "securegaze"
    needs = Needs(clean_data=True, feature_head=True, tasks=("gaze",))

    def __init__(
        self,
        steps: int = 200,
        restarts: int = 1,
        batch_size: int = 32,
        lr: float = 5e-3,
        width: int = 16,
        input_dependent: bool = True,
        pattern_resolution: int | None = None,
        budget: float = 0.03,
        saliency_strength: float = 20.0,
        lambda_feat: float = 1.0,
        pull: float = 0.0,
        target_lr: float = 0.02,
        explore_steps: int = 20,
        signatures: Sequence[str] = ("collapse",),
        min_shift_deg: float = 8.0,
        scan_starts: int = 3,
        scan_shapes: Sequence[Sequence[float]] = ((0.2, 0.2), (0.1, 0.3), (0.3, 0.1)),
        scan_images: int = 32,
        scan_pattern_only: bool = False,
        jitter_noise: float = 0.0,
        jitter_shift: int = 0,
        threshold: float = 2.0,
        holdout: float = 0.5,
        min_clean: int = 128,
        n_examples: int = 8,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if steps < 1 or restarts < 1 or batch_size < 2 or lr <= 0 or width < 1 or budget <= 0:
            raise BackdoorLabError(
                "SecureGaze: steps >= 1, restarts >= 1, batch_size >= 2, lr > 0, width >= 1 and budget > 0 are "
                f"required; got steps={steps}, restarts={restarts}, batch_size={batch_size}, lr={lr}, width={width}, "
                f"budget={budget}"
            )
        if pull < 0 or target_lr <= 0 or explore_steps < 1:
            raise BackdoorLabError(
                f"SecureGaze: pull >= 0, target_lr > 0 and explore_steps >= 1 are required; got pull={pull}, "
                f"target_lr={target_lr}, explore_steps={explore_steps}"
            )

        def fraction(f: object) -> bool:
            return isinstance(f, int | float) and 0 < f <= 1

        shapes_ok = isinstance(scan_shapes, Sequence) and all(
            isinstance(size, Sequence) and len(size) == 2 and all(map(fraction, size)) for size in scan_shapes
        )
        if scan_starts < 0 or not shapes_ok or (scan_starts and not scan_shapes) or scan_images < 2:
            raise BackdoorLabError(
                "SecureGaze: scan_starts >= 0, scan_shapes a non-empty list of [height, width] fractions in (0, 1] "
                f"and scan_images >= 2 are required; got scan_starts={scan_starts}, scan_shapes={scan_shapes!r}, "
                f"scan_images={scan_images}"
            )
        if not 0 < holdout < 1:
            raise BackdoorLabError(f"SecureGaze: holdout must be in (0, 1); got {holdout}")
        if isinstance(signatures, str) or not signatures or not set(signatures) <= {"collapse", "shift"}:
            raise BackdoorLabError(
                f"SecureGaze: signatures must be a non-empty list of 'collapse' and 'shift'; got {signatures!r}"
            )
        if not min_shift_deg > 0:
            raise BackdoorLabError(f"SecureGaze: min_shift_deg must be > 0; got {min_shift_deg}")
        self.steps, self.restarts, self.batch_size, self.lr, self.width = steps, restarts, batch_size, lr, width
        self.input_dependent, self.pattern_resolution = input_dependent, pattern_resolution
        self.budget, self.saliency_strength, self.lambda_feat = budget, saliency_strength, lambda_feat
        self.pull, self.target_lr, self.explore_steps = pull, target_lr, explore_steps
        self.signatures: list[Signature] = list(dict.fromkeys(signatures))  # type: ignore[arg-type]
        self.min_shift_deg = float(min_shift_deg)
        self.scan_starts, self.scan_images, self.scan_pattern_only = scan_starts, scan_images, bool(scan_pattern_only)
        self.scan_shapes = [[float(f) for f in size] for size in scan_shapes]  # lists: params() round-trips JSON
        self.jitter_noise, self.jitter_shift = jitter_noise, jitter_shift
        self.threshold, self.holdout, self.min_clean = threshold, holdout, min_clean
        self.n_examples, self.seed, self.device = n_examples, seed, device

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def reverse(self, model: nn.Module, clean_data: ArrayDataset) -> ReversedTrigger:
        """Train the generator against a frozen copy of ``model``; ``model`` itself is untouched."""
        self.check_needs(model=model, clean_data=clean_data)
        dev = pick_device(self.device)
        frozen = copy.deepcopy(model).to(dev).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        head: nn.Linear = frozen.head  # type: ignore[assignment]
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(clean_data))
        n_hold = max(2, round(self.holdout * len(clean_data)))
        hold, _ = clean_data.batch(np.sort(order[:n_hold]))
        fit, _ = clean_data.batch(np.sort(order[n_hold:]))
        hold, fit = hold.to(dev), fit.to(dev)
        with torch.no_grad():
            feats = frozen.features(fit)  # type: ignore[operator]
            fit_pred = head(feats)
            out_var = fit_pred.var(0).clamp_min(1e-12)
            ang_var = feature_head_angles(feats, head).var(0).clamp_min(1e-12)
            hold_feats = frozen.features(hold)  # type: ignore[operator]
            hold_pred = head(hold_feats)
            hold_var = hold_pred.var(0).clamp_min(1e-12)
            hold_ang = feature_head_angles(hold_feats, head).var(0).clamp_min(1e-12)
            clean_spread = target_spread_deg(hold_pred.double().cpu().numpy())
        cost = 1 + self.saliency_strength * saliency_map(frozen, fit[:256]) if self.saliency_strength else None
        clean = _CleanStats(fit_pred, out_var, ang_var)
        targets = initial_targets(fit_pred, self.restarts)
        searches = [self._start(frozen, fit, clean, cost, i, t, rng) for i, t in enumerate(targets)]
        for k, (pattern, signature, t) in enumerate(self._scan_solids(frozen, fit, clean, cost)):
            searches.append(self._start(frozen, fit, clean, cost, len(targets) + k, t, rng, pattern, signature))
        if len(searches) > 1:  # explore every start briefly, continue the one that shows its signature most
            explore = min(self.explore_steps, self.steps)
            for search in searches:
                search.advance(explore)
            ratios = [self._hold_ratio(frozen, search, hold, hold_pred, hold_var) for search in searches]
            searches = [searches[int(np.argmin(ratios))]]
        search = searches[0]
        search.advance(self.steps - search.done)
        gen = search.gen.eval()
        with torch.no_grad():
            gx = gen(hold)
            score_jit = torch.Generator().manual_seed(self.seed + 1)
            f = frozen.features(jitter(gx, self.jitter_noise, self.jitter_shift, score_jit))  # type: ignore[operator]
            pred = head(f)
            ratio = float(collapse_ratio(pred, hold_pred, hold_var, search.signature, self.min_shift))
            ang_ratio = float((feature_head_angles(f, head).var(0) / hold_ang).mean())
            l1 = float((gx - hold).abs().mean())
            shift = np.degrees((pred - hold_pred).mean(0).double().cpu().numpy())
        pred_np = pred.double().cpu().numpy()
        mean_dir = pitchyaw_to_vector(torch.from_numpy(pred_np)).mean(0, keepdim=True)
        target = np.degrees(vector_to_pitchyaw(mean_dir)[0].numpy())
        for p in gen.parameters():
            p.requires_grad_(False)
        return ReversedTrigger(
            generator=gen.cpu(),
            variance_ratio=ratio,
            signature=search.signature,
            shift_deg=(float(shift[0]), float(shift[1])),
            angle_variance_ratio=ang_ratio,
            perturbation_l1=l1,
            output_spread_deg=target_spread_deg(pred_np),
            clean_output_spread_deg=clean_spread,
            target_deg=(float(target[0]), float(target[1])),
            examples=tensor_to_images(gx[: self.n_examples].cpu()),
        )

    def _generator(self, shape: tuple[int, ...], cost: Tensor | None, input_dependent: bool = True) -> TriggerGenerator:
        dependent = self.input_dependent and input_dependent
        return TriggerGenerator(shape, self.budget, cost, self.width, dependent, self.pattern_resolution)  # type: ignore[arg-type]

    @property
    def min_shift(self) -> float:
        """``min_shift_deg`` in the model's output unit (radians)."""
        return math.radians(self.min_shift_deg)

    def _start(self, frozen: nn.Module, fit: Tensor, clean: _CleanStats, cost: Tensor | None,
               index: int, target_init: Tensor, batches: np.random.Generator,
               pattern: Tensor | None = None, signature: Signature = "collapse") -> _Search:  # fmt: skip
        """Start ``index``: its own generator initialisation, batch order, jitter, initial target, ``P`` and signature.

        Start 0 draws its batches from ``batches`` (the generator that split the clean set).
        """
        torch.manual_seed(self.seed + index)
        gen = self._generator(tuple(fit.shape[1:]), cost, input_dependent=pattern is None or not self.scan_pattern_only)
        if pattern is not None:
            gen.set_pattern(pattern)
        rng = batches if index == 0 else np.random.default_rng([self.seed, index])
        return _Search(self, frozen, fit, clean, gen.to(fit.device), target_init, rng, self.seed + index, signature)

    @torch.no_grad()
    def _scan_solids(
        self, frozen: nn.Module, fit: Tensor, clean: _CleanStats, cost: Tensor | None
    ) -> list[tuple[Tensor, Signature, Tensor]]:
        """``(P, signature, mean output)`` of the ``scan_starts`` solid rectangles that show a signature most, apart.

        Every rectangle of every size in ``scan_shapes`` is applied as G would apply it (added,
        rescaled into the budget, clamped) to ``scan_images`` clean images, and ranked by the
        better of its :func:`collapse_ratio` over ``signatures``. A rectangle is skipped when one
        of the same colour already chosen intersects it, so the starts differ.
        """
        if not self.scan_starts:
            return []
        x = fit[: self.scan_images]
        y0 = clean.outputs[: self.scan_images]
        shape = tuple(fit.shape[1:])
        # P alone: a new generator's convolutional part adds exactly zero, so this is each start's G, cheaper
        gen = self._generator(shape, cost, input_dependent=False).to(fit.device).eval()
        candidates = [c for size in self.scan_shapes for c in solid_patterns(shape, size)]  # type: ignore[arg-type]
        ranked = []
        for first in range(0, len(candidates), SCAN_CHUNK):  # several rectangles per forward pass: fewer, larger GEMMs
            chunk = candidates[first : first + SCAN_CHUNK]
            changes = []
            for pattern, _ in chunk:  # G's change is the same for every image when it is P alone
                gen.set_pattern(pattern)
                changes.append(gen.perturbation(x[:1]))
            painted = (x[None] + torch.cat(changes)[:, None]).clamp(0, 1)  # (rectangles, images, C, H, W)
            outputs = frozen(painted.flatten(0, 1)).unflatten(0, painted.shape[:2])
            for (pattern, place), y in zip(chunk, outputs, strict=True):
                for signature in self.signatures:
                    ratio = float(collapse_ratio(y, y0, clean.var, signature, self.min_shift))
                    ranked.append((ratio, place, pattern, signature, y.mean(0)))
        ranked.sort(key=lambda r: r[0])
        chosen: list[tuple[Tensor, Signature, Tensor]] = []
        places: list[tuple[int, int, int, int, int]] = []
        for _, place, pattern, signature, mean in ranked:
            if any(_overlap(place, other) for other in places):
                continue
            chosen.append((pattern, signature, mean))
            places.append(place)
            if len(chosen) == self.scan_starts:
                break
        return chosen

    @torch.no_grad()
    def _hold_ratio(
        self, frozen: nn.Module, search: _Search, hold: Tensor, hold_pred: Tensor, hold_var: Tensor
    ) -> float:
        """Held-out :func:`collapse_ratio` of one start's signature (without jitter): how starts are compared."""
        y = frozen(search.gen(hold))
        return float(collapse_ratio(y, hold_pred, hold_var, search.signature, self.min_shift))

    def inspect(self, model: nn.Module, clean_data: ArrayDataset) -> Verdict:
        t0 = time.perf_counter()
        rev = self.reverse(model, clean_data)
        score = -math.log10(max(rev.variance_ratio, 1e-12))
        return Verdict(
            method=self.name,
            backdoored=bool(score >= self.threshold),
            score=float(score),
            threshold=float(self.threshold),
            seconds=time.perf_counter() - t0,
            estimates={"target_deg": list(rev.target_deg)}
            if rev.signature == "collapse"
            else {"shift_deg": list(rev.shift_deg)},
            details={
                "signature": rev.signature,
                "variance_ratio": rev.variance_ratio,
                "angle_variance_ratio": rev.angle_variance_ratio,
                "perturbation_l1": rev.perturbation_l1,
                "output_spread_deg": rev.output_spread_deg,
                "clean_output_spread_deg": rev.clean_output_spread_deg,
                "n_clean": len(clean_data),
                "params": self.params(),
            },
            examples=rev.examples,
        )


@dataclass
class _CleanStats:
    """The frozen model on the optimisation part of the clean set: outputs, output and angle variances."""

    outputs: Tensor
    var: Tensor
    angle_var: Tensor


class _Search:
    """One start of the generator optimisation, resumable: explored for a few steps, continued if it is the best.

    Loss per batch (see the module docstring): the :func:`collapse_ratio` of the start's
    signature and, for a collapse, the pull of the mean output towards the learnt collapse
    point t (``pull``; what makes starts differ: each start's t begins at another clean
    output) and the feature-angle variance ratio (a shift moves every output by the same
    amount, not its features to one angle).
    """

    def __init__(
        self, det: SecureGaze, frozen: nn.Module, fit: Tensor, clean: _CleanStats, gen: TriggerGenerator,
        target_init: Tensor, rng: np.random.Generator, jitter_seed: int, signature: Signature = "collapse",
    ) -> None:  # fmt: skip
        self.det, self.frozen, self.fit, self.clean, self.gen, self.rng = det, frozen, fit, clean, gen, rng
        self.signature = signature
        self.target = target_init.detach().clone().requires_grad_(True)
        groups = [{"params": gen.parameters()}, {"params": [self.target], "lr": det.target_lr}]
        self.opt = torch.optim.Adam(groups, lr=det.lr)
        self.jit = torch.Generator().manual_seed(jitter_seed)
        self.done = 0

    def advance(self, steps: int) -> None:
        det, frozen, fit, clean = self.det, self.frozen, self.fit, self.clean
        head: nn.Linear = frozen.head  # type: ignore[assignment]
        bs = min(det.batch_size, len(fit))
        collapse = self.signature == "collapse"
        self.gen.train()
        for _ in range(steps):
            idx = torch.from_numpy(self.rng.choice(len(fit), bs, replace=False)).to(fit.device)
            f = frozen.features(jitter(self.gen(fit[idx]), det.jitter_noise, det.jitter_shift, self.jit))  # type: ignore[operator]
            y = head(f)
            loss = collapse_ratio(y, clean.outputs[idx], clean.var, self.signature, det.min_shift)
            if det.pull and collapse:
                loss = loss + det.pull * ((y.mean(0) - self.target) ** 2 / clean.var).mean()
            if det.lambda_feat and collapse:
                loss = loss + det.lambda_feat * (feature_head_angles(f, head).var(0) / clean.angle_var).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.done += 1
            if not math.isfinite(loss.item()):
                raise BackdoorLabError(f"SecureGaze: the generator's loss became {loss.item()} at step {self.done}")
        self.gen.eval()


class SecureGazeUnlearningConfig(SecureGazeConfig):
    """The settings of :class:`SecureGazeUnlearning`: the reversal's (flat, as the detector's), its own, ``tune``."""

    paired: bool = True
    mix: float = Field(0.5, gt=0, le=1)
    clean_targets: Literal["model", "label"] = "model"
    tune: FineTuneSettings = Field(default_factory=FineTuneSettings)

    def constructor_kwargs(self) -> dict[str, Any]:
        own = {"paired", "mix", "clean_targets", "tune", "device"}
        detector = {k: getattr(self, k) for k in SecureGazeConfig.model_fields}  # device included
        return {
            "detector": SecureGaze(**detector),
            "settings": self.tune,
            **{k: getattr(self, k) for k in own - {"tune"}},
        }


@register_defence(SecureGazeUnlearningConfig)
class SecureGazeUnlearning(Mitigator):
    """Unlearn the reversed trigger: fine-tune on G(x) labelled with the true gaze of x, beside clean x.

    By default (``paired``) every fine-tuning batch holds each of its clean images twice:
    as x, whose target is the *original* model's own prediction on x (``clean_targets="model"``),
    and as G(x), whose target is the true gaze of x. The G rows teach that the trigger
    function changes nothing; the clean rows hold the model where it was on clean faces.
    Why not the true labels on the clean rows: fitting 256 labels better is itself a change
    of the model (fine-tuning on them alone costs +0.1-0.3 deg on unseen faces), while the
    original's predictions are what the clean rows should keep. Measured on zoo seeds 11,
    14, 17 and 20 (patch, blend, WaNet, sticker; none of them in the mitigation bench), mean
    clean-error change and worst ASR: 0.69 deg and 0.06, against 0.82 deg and 0.16 for the
    earlier recipe (half of each batch replaced by G(x), true labels everywhere; ``paired=False,
    clean_targets="label"``), which is still available.

    Args:
        detector: the SecureGaze settings used to reverse the trigger.
        settings: the fine-tuning schedule (:class:`FineTuneSettings`).
        paired: every image appears as x and as G(x) in its batch (batches twice as large);
            False = a ``mix`` fraction of the rows is replaced by G(x).
        mix: with ``paired=False``, the fraction of each batch replaced by reversed-trigger images.
        clean_targets: target of the clean rows: "model" (the original model's prediction) or "label"
            (the true gaze). The G(x) rows always take the true gaze of x.
        device: "auto", "cpu" or "cuda".
    """

    name = "securegaze"
    needs = Needs(clean_data=True, labels=True, feature_head=True, tasks=("gaze",))

    def __init__(
        self,
        detector: SecureGaze | None = None,
        settings: FineTuneSettings | None = None,
        paired: bool = True,
        mix: float = 0.5,
        clean_targets: str = "model",
        device: str = "auto",
    ) -> None:
        if not 0 < mix <= 1:
            raise BackdoorLabError(f"SecureGazeUnlearning: mix must be in (0, 1]; got {mix}")
        if not isinstance(paired, bool) or clean_targets not in ("model", "label"):
            raise BackdoorLabError(
                f"SecureGazeUnlearning: paired must be true/false and clean_targets 'model' or 'label'; got "
                f"paired={paired!r}, clean_targets={clean_targets!r}"
            )
        self.detector = detector or SecureGaze(device=device)
        self.settings = settings or FineTuneSettings()
        self.paired, self.mix, self.clean_targets, self.device = paired, mix, clean_targets, device
        self.task = GazeTask()  # the method is gaze's: its reversed-trigger rows are labelled with the true gaze
        self.min_clean = self.detector.min_clean
        self.last_report: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {
            "detector": self.detector.params(),
            "fine_tune": self.settings.params(),
            "paired": self.paired,
            "mix": self.mix,
            "clean_targets": self.clean_targets,
            "device": self.device,
        }

    def repair(
        self, model: nn.Module, clean_data: ArrayDataset, reversed_trigger: ReversedTrigger | None = None
    ) -> nn.Module:
        """A copy of ``model`` fine-tuned to ignore the reversed trigger (reversed here unless given)."""
        self.check_needs(model=model, clean_data=clean_data, task=self.task)
        t0 = time.perf_counter()
        rev = reversed_trigger or self.detector.reverse(model, clean_data)
        gen = rev.generator
        dev = gen.pattern.device
        original = copy.deepcopy(model).to(dev).eval() if self.clean_targets == "model" else None
        # with paired=False, which rows get G(x) depends only on (seed, sample index): reproducible, batch-size free
        replaced = np.random.default_rng([self.settings.seed, 7]).random(len(clean_data)) < self.mix

        def with_reversed_trigger(images: Tensor, ann: dict[str, Tensor], idx: np.ndarray) -> tuple[Tensor, dict]:
            true_gaze = ann["gaze"].float()
            with torch.no_grad():
                clean_gaze = true_gaze if original is None else original(images.to(dev)).to(images.device)
                if self.paired:
                    reversed_images = gen(images.to(dev)).to(images.device)
                    return torch.cat([images, reversed_images]), {"gaze": torch.cat([clean_gaze, true_gaze])}
                rows = torch.from_numpy(np.flatnonzero(replaced[idx]))
                images, gaze = images.clone(), clean_gaze.clone()
                if len(rows):
                    images[rows] = gen(images[rows].to(dev)).to(images.device)
                    gaze[rows] = true_gaze[rows]
            return images, {"gaze": gaze}

        repaired = fine_tune(
            model, self.task, clean_data, self.settings, self.device, batch_transform=with_reversed_trigger
        )
        self.last_report = {
            "variance_ratio_before": rev.variance_ratio,
            "estimated_target_deg": list(rev.target_deg),
            "n_clean": len(clean_data),
            "seconds": time.perf_counter() - t0,
            "params": self.params(),
        }
        return repaired
