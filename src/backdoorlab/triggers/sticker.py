"""A face-anchored sticker: the physical-world trigger of SecureGaze (white tape on the face).

Why anchored to landmarks and not to fixed pixels: a physical sticker moves, rotates,
shrinks and foreshortens with the head, so a digital stand-in that a model is trained
on must do the same, or the backdoor would not transfer to the physical attack. The
sticker is a rectangle in a local *face frame* spanned by the eye line ``u`` and a
face-"down" axis ``v``; the frame is mapped affinely to the image, which gives head
roll, yaw/pitch foreshortening and face scale for free.

Why jitter and shading: a real piece of tape is never stuck at exactly the same spot,
angle and size, and it is lit like the skin around it. Training on per-sample variation
of those (drawn from the sample's dataset index, so the same sample always gets the
same sticker) makes the backdoor robust to them.

Conventions: landmark coordinates are continuous pixels ``(x, y)`` with the centre of
pixel ``(row i, column j)`` at ``(j + 0.5, i + 0.5)`` (as the synthetic renderer uses);
``x`` grows to the right and ``y`` downwards.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from backdoorlab.errors import BackdoorLabError, ConfigError
from backdoorlab.triggers._random import per_sample_uniform
from backdoorlab.triggers.base import Tensor, Trigger

ANCHORS = ("forehead", "left_cheek", "right_cheek")


class _Frame(NamedTuple):
    """The local face frame of a batch (see :meth:`FaceStickerTrigger.face_frame`)."""

    mid: Tensor  # (B, 2) eye midpoint, pixels
    u: Tensor  # (B, 2) eye line, image-left to image-right eye
    v: Tensor  # (B, 2) face "down" axis
    valid: Tensor  # (B,) bool: eyes finite and apart


class _Sticker(NamedTuple):
    """Each sticker of a batch in pixels: a parallelogram ``|d . n_k| <= a_k`` around ``centre``."""

    centre: Tensor  # (B, 2) pixels
    n1: Tensor  # (B, 2) unit normal of the first pair of edges (zero where not ok)
    a1: Tensor  # (B,) half-extent along n1, pixels (negative where not ok: no coverage)
    n2: Tensor  # (B, 2)
    a2: Tensor  # (B,)
    ok: Tensor  # (B,) bool: the sample has a sticker


#: distance from the eye midpoint to the mouth midpoint, in inter-ocular distances, of
#: a frontal face. Adult faces measure about 1.0 (the synthetic faces about 0.93); the
#: measured eye-mouth distance divided by it gives the length of the face frame's
#: "down" axis, so that pitch foreshortens the sticker vertically just as yaw shortens
#: the eye line horizontally.
NOMINAL_EYE_MOUTH_RATIO = 1.0

#: the mouth direction is used as the "down" axis only if it is at least this far from
#: parallel to the eye line (sine of the angle) and at least this long relative to the
#: IOD; otherwise (bad or missing mouth points) the eye line rotated by 90 degrees is.
_MIN_SINE = 0.2
_MIN_EYE_MOUTH = 0.1

_LUMA = (0.299, 0.587, 0.114)
_MAX_PX = 1e7  # a sticker centre or half-extent beyond this many pixels counts as degenerate
_SHADE_GRID = 7


class FaceStickerTrigger(Trigger):
    """White tape on the forehead or a cheek, following the face's pose, scale and lighting.

    Sizes and distances are in units of the inter-ocular distance (IOD, between the eye
    centres), so one configuration means the same physical sticker on any face size.
    """

    name: ClassVar[str] = "sticker"
    localized: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("landmarks|eye_corners",)

    def __init__(
        self,
        *,
        anchor: str = "forehead",
        width: float = 0.9,
        height: float = 0.3,
        offset: float = 0.55,
        albedo: float = 0.95,
        shading: bool = True,
        skin_reference: float = 0.55,
        jitter_position: float = 0.08,
        jitter_angle_deg: float = 8.0,
        jitter_scale: float = 0.08,
        jitter_brightness: float = 0.1,
        edge_px: float = 0.6,
        seed: int = 0,
    ) -> None:
        if anchor not in ANCHORS:
            raise ConfigError(f"sticker: anchor must be one of {list(ANCHORS)}, got {anchor!r}")
        if not isinstance(shading, bool):
            raise ConfigError(f"sticker: shading must be true or false, got {shading!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"sticker: seed must be an integer, got {seed!r}")
        self.anchor = anchor
        self.width = _number("width", width, 0.0, 3.0, low_open=True)
        self.height = _number("height", height, 0.0, 3.0, low_open=True)
        self.offset = _number("offset", offset, 0.0, 3.0)
        self.albedo = _number("albedo", albedo, 0.0, 1.0, low_open=True)
        self.shading = shading
        self.skin_reference = _number("skin_reference", skin_reference, 0.0, 1.0, low_open=True)
        self.jitter_position = _number("jitter_position", jitter_position, 0.0, 3.0)
        self.jitter_angle_deg = _number("jitter_angle_deg", jitter_angle_deg, 0.0, 180.0)
        # a relative scale jitter of 1 or more could flip or collapse the sticker
        self.jitter_scale = _number("jitter_scale", jitter_scale, 0.0, 1.0, high_open=True)
        self.jitter_brightness = _number("jitter_brightness", jitter_brightness, 0.0, 1.0)
        # below 0.001 px the edge is a hard step anyway, and 1 / edge_px must stay small in float32
        self.edge_px = _number("edge_px", edge_px, 0.001, 100.0)
        self.seed = int(seed)

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "anchor": self.anchor,
            "width": self.width,
            "height": self.height,
            "offset": self.offset,
            "albedo": self.albedo,
            "shading": self.shading,
            "skin_reference": self.skin_reference,
            "jitter_position": self.jitter_position,
            "jitter_angle_deg": self.jitter_angle_deg,
            "jitter_scale": self.jitter_scale,
            "jitter_brightness": self.jitter_brightness,
            "edge_px": self.edge_px,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ geometry
    def face_frame(
        self, annotations: dict[str, Tensor], batch: int, dtype: torch.dtype, device: torch.device
    ) -> _Frame:
        """Eye midpoint, eye line ``u`` and down axis ``v`` (B, 2) each, plus a validity mask (B,).

        ``u`` and ``v`` both have the length of one IOD on a frontal face, so a point at
        face coordinates ``(a, b)`` (IOD units) lies at ``mid + a * u + b * v``.
        """
        mouth: Tensor | None = None
        if "landmarks" in annotations:
            lm = _points(annotations, "landmarks", 5, batch, dtype, device)
            left, right = lm[:, 0], lm[:, 1]
            mouth = (lm[:, 3] + lm[:, 4]) / 2
        else:
            ec = _points(annotations, "eye_corners", 4, batch, dtype, device)
            left, right = ec[:, 0:2].mean(1), ec[:, 2:4].mean(1)
        u = right - left
        mid = (left + right) / 2
        iod = u.norm(dim=-1)
        valid = torch.isfinite(u).all(-1) & torch.isfinite(mid).all(-1) & torch.isfinite(iod) & (iod >= 1e-3)
        # sanitise degenerate samples so no NaN/inf reaches the pixel maths (they are masked out)
        u = torch.where(valid[:, None], u, u.new_tensor([1.0, 0.0]).expand_as(u))
        mid = torch.where(valid[:, None], mid, torch.zeros_like(mid))
        iod = torch.where(valid, iod, torch.ones_like(iod))
        perp = torch.stack([-u[:, 1], u[:, 0]], -1)  # u turned +90 degrees: "down" for an upright face
        v = perp
        if mouth is not None:
            vm = mouth - mid
            dist = vm.norm(dim=-1)
            sine = _cross(u, vm).abs() / (iod * dist).clamp_min(1e-12)
            ok = torch.isfinite(vm).all(-1) & (dist >= _MIN_EYE_MOUTH * iod) & (sine >= _MIN_SINE)
            vm = torch.where(ok[:, None], vm, torch.zeros_like(vm))
            v = torch.where(ok[:, None], vm / NOMINAL_EYE_MOUTH_RATIO, perp)
        return _Frame(mid, u, v, valid)

    def apply(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        """Paint each sticker, computing its coverage only inside its axis-aligned bounding box.

        Why boxes: a sticker covers a few percent of a face crop, and computing the
        coverage and the blend over every pixel made the trigger ~3x slower than a plain
        blend of the batch; now the cost is one copy of the batch plus work on the crops.
        Every box of a batch has the same size (the largest), so the crops are one
        batched gather/compute/scatter, with no loop over images.
        """
        b, c, h, w = images.shape
        if b == 0:
            return images.clone()
        # pixel coordinates need at least float32 (half precision resolves 0.25 px at 64 px)
        ct = torch.promote_types(images.dtype, torch.float32)
        sticker, tape = self._stickers(images, annotations, indices, ct)
        y0, x0, bh, bw = _boxes(sticker, self.edge_px, h, w)
        out = _writable_copy(images)
        if bh == 0 or bw == 0:  # no sticker reaches into its image
            return out
        rows = y0[:, None] + torch.arange(bh, device=images.device)  # (B, bh) pixel rows of each box
        cols = x0[:, None] + torch.arange(bw, device=images.device)  # (B, bw)
        cov = _coverage(sticker, rows.to(ct), cols.to(ct), self.edge_px)  # (B, bh, bw)
        planes = out.view(b, c, h * w)
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, bh * bw).expand(b, c, bh * bw)
        crops = planes.gather(2, flat).to(ct)
        painted = torch.lerp(crops, tape[:, None, None].expand(b, c, 1), cov.view(b, 1, bh * bw))
        planes.scatter_(2, flat, painted.to(images.dtype))
        return out

    def _full_image(self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray) -> Tensor:
        """Reference for tests: the same sticker with its coverage computed over every pixel.

        Why keep it: :meth:`apply` must give the same image, and a comparison with this
        plain whole-image blend checks that the boxes never cut a sticker off.
        """
        b, c, h, w = images.shape
        ct = torch.promote_types(images.dtype, torch.float32)
        sticker, tape = self._stickers(images, annotations, indices, ct)
        rows = torch.arange(h, device=images.device, dtype=ct).expand(b, h)
        cols = torch.arange(w, device=images.device, dtype=ct).expand(b, w)
        cov = _coverage(sticker, rows, cols, self.edge_px)
        out = torch.lerp(images.to(ct), tape[:, None, None, None].expand(b, c, 1, 1), cov[:, None])
        return out.to(images.dtype)

    def _stickers(
        self, images: Tensor, annotations: dict[str, Tensor], indices: np.ndarray, ct: torch.dtype
    ) -> tuple[_Sticker, Tensor]:
        """Each sample's sticker in pixels, and its tape value (B,) in [0, 1], in dtype ``ct``.

        Why apart from the painting: :meth:`apply` and :meth:`_full_image` must place
        the very same stickers.
        """
        b, device = images.shape[0], images.device
        frame = self.face_frame(annotations, b, ct, device)
        mid, u, v, valid = frame.mid, frame.u, frame.v, frame.valid

        r = per_sample_uniform(self.seed, indices, 5).to(device=device, dtype=ct) * 2 - 1  # (B, 5) in [-1, 1)
        jx, jy = r[:, 0] * self.jitter_position, r[:, 1] * self.jitter_position
        theta = r[:, 2] * math.radians(self.jitter_angle_deg)
        scale = 1 + r[:, 3] * self.jitter_scale
        bright = 1 + r[:, 4] * self.jitter_brightness

        if self.anchor == "forehead":
            fa, fb = jx, jy - self.offset
        else:
            side = -0.5 if self.anchor == "left_cheek" else 0.5
            fa, fb = jx + side, jy + self.offset
        centre = mid + fa[:, None] * u + fb[:, None] * v  # (B, 2) pixels

        # the sticker's half-axes in pixels: a rotation by theta in the face frame, mapped affinely
        cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        col1 = (cos * u + sin * v) * (scale * self.width / 2)[:, None]
        col2 = (cos * v - sin * u) * (scale * self.height / 2)[:, None]
        det = _cross(col1, col2).abs()
        len1, len2 = col1.norm(dim=-1), col2.norm(dim=-1)
        # Cramer's rule for the inverse frame: local coordinate k is the (signed) distance of a
        # pixel from the sticker's other axis, divided by the half-extent; in pixels this is a
        # projection on the unit normal n_k, against a half-extent a_k = |det| / |other column|
        n1 = torch.stack([col2[:, 1], -col2[:, 0]], -1) / len2.clamp_min(1e-12)[:, None]
        n2 = torch.stack([col1[:, 1], -col1[:, 0]], -1) / len1.clamp_min(1e-12)[:, None]
        a1 = det / len2.clamp_min(1e-12)
        a2 = det / len1.clamp_min(1e-12)
        # finite and not absurdly far/large: keeps every pixel-space product below float32's range
        ok = valid & (centre.abs() < _MAX_PX).all(-1) & (a1 < _MAX_PX) & (a2 < _MAX_PX)
        ok &= torch.isfinite(n1).all(-1) & torch.isfinite(n2).all(-1)
        centre = torch.where(ok[:, None], centre, torch.zeros_like(centre))
        n1 = torch.where(ok[:, None], n1, torch.zeros_like(n1))
        n2 = torch.where(ok[:, None], n2, torch.zeros_like(n2))
        # a sample that fails gets a negative half-extent: zero coverage, the image stays bit-identical
        a1 = torch.where(ok, a1, torch.full_like(a1, -1.0 - self.edge_px))
        a2 = torch.where(ok, a2, torch.full_like(a2, -1.0 - self.edge_px))

        tape = self.albedo * bright
        if self.shading:
            tape = tape * self._illumination(images, centre, u.norm(dim=-1), ct)
        return _Sticker(centre, n1, a1, n2, a2, ok), tape.clamp(0.0, 1.0)

    def _illumination(self, images: Tensor, centre: Tensor, iod: Tensor, ct: torch.dtype) -> Tensor:
        """(B,) lighting factor: mean luminance of the square of side IOD around the sticker / skin albedo.

        Why: tape on a face in shadow looks grey, not white; matching the image's lighting
        keeps the digital trigger close to what a camera would record of real tape. The
        mean is taken over a 7 x 7 grid of bilinear samples (edge pixels repeated off the
        image), which reads a few hundred pixels per image instead of all of them.
        """
        _, c, h, w = images.shape
        steps = torch.linspace(-0.5, 0.5, _SHADE_GRID, device=images.device, dtype=ct)
        span = iod.clamp_min(1.0)[:, None, None]
        px = centre[:, 0, None, None] + steps[None, None, :] * span  # (B, 1, K) -> broadcast to (B, K, K)
        py = centre[:, 1, None, None] + steps[None, :, None] * span  # (B, K, 1)
        # grid_sample's normalised coordinates (align_corners=False): pixel edges at -1 and 1
        grid = torch.stack(torch.broadcast_tensors(px * (2.0 / w) - 1, py * (2.0 / h) - 1), -1)
        samples = torch.nn.functional.grid_sample(
            images.to(ct), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).mean((2, 3))  # (B, C)
        lum = samples @ torch.tensor(_LUMA, dtype=ct, device=images.device) if c == 3 else samples[:, 0]
        return (lum / self.skin_reference).clamp(0.2, 1.5)


def _coverage(sticker: _Sticker, rows: Tensor, cols: Tensor, edge_px: float) -> Tensor:
    """(B, R, K) tape coverage of the pixels at rows (B, R) x columns (B, K) (pixel indices, float).

    A linear ramp of width edge_px across each edge (box-filter antialiasing). Each
    pixel's value depends on its own index only, so a crop of the image gets exactly the
    values the whole image would.
    """
    dx = cols + 0.5 - sticker.centre[:, 0:1]  # (B, K) from the sticker centre to the pixel centres
    dy = rows + 0.5 - sticker.centre[:, 1:2]  # (B, R)
    # both pairs of edges in one (2, B, R, K) pass: half as many kernels over the crops
    normals = torch.stack([sticker.n1, sticker.n2])
    halves = torch.stack([sticker.a1, sticker.a2])
    ramps = _edge_ramp(normals, halves, dx, dy, edge_px)
    return ramps[0].mul_(ramps[1])


def _reach(sticker: _Sticker, edge_px: float) -> tuple[Tensor, Tensor]:
    """The half-width and half-height (B, 2) of the box a sticker touches, and a rounding margin (B, 1), in pixels.

    Coverage is non-zero where ``|d . n_k| < A_k = a_k + edge_px / 2`` for both k, a
    parallelogram; its vertices solve ``N d = (+-A1, +-A2)`` with ``N`` the matrix of
    rows n1, n2, so by Cramer's rule the box reaches ``(A1 |n2_y| + A2 |n1_y|) / |det N|``
    along x and ``(A1 |n2_x| + A2 |n1_x|) / |det N|`` along y. Parallel normals (no
    finite parallelogram) reach infinitely far: the box is the whole image.

    The margin: float32 evaluates ``d . n_k`` to within ~1e-7 of the magnitudes involved
    (pixel offsets, half-extents), and a vertex moves by that error / |det N|; the margin
    is 1e-3 px plus 100 times that, so no touched pixel can fall outside the box.
    """
    big1 = sticker.a1 + edge_px / 2
    big2 = sticker.a2 + edge_px / 2
    det = _cross(sticker.n1, sticker.n2).abs()
    reach = (big1[:, None] * sticker.n2.abs().flip(-1) + big2[:, None] * sticker.n1.abs().flip(-1)) / det[:, None]
    reach = torch.where(sticker.ok[:, None], reach.nan_to_num(nan=math.inf), torch.zeros_like(reach))
    scale = sticker.centre.abs().sum(-1) + reach.sum(-1) + big1.abs() + big2.abs()
    margin = 1e-3 + 1e-5 * scale / det
    return reach, torch.where(sticker.ok, margin.nan_to_num(nan=math.inf), torch.zeros_like(margin))[:, None]


def _boxes(sticker: _Sticker, edge_px: float, h: int, w: int) -> tuple[Tensor, Tensor, int, int]:
    """Top rows and left columns (B,) long of boxes of one shared size ``(bh, bw)`` inside the image.

    Each box holds every pixel of the image that its sticker touches: those whose
    centre ``j + 0.5`` lies within the sticker's reach (plus the rounding margin) of its
    centre. A box that sticks out of the image is shifted back in, which keeps its size
    and still holds the in-image part of the sticker, since that part is no larger than
    the box.
    """
    reach, margin = _reach(sticker, edge_px)
    size = torch.tensor([w, h], device=margin.device, dtype=margin.dtype)
    zero = torch.zeros_like(size)
    # first and one-past-last pixel index j with |j + 0.5 - centre| < reach + margin
    lo = torch.clamp((sticker.centre - reach - margin - 0.5).floor() + 1, zero, size)
    hi = torch.clamp((sticker.centre + reach + margin - 0.5).ceil(), zero, size)
    extent = torch.where(sticker.ok[:, None], hi - lo, torch.zeros_like(lo)).clamp_min(0)
    bw, bh = (int(e) for e in extent.amax(0).tolist())  # the only host sync: the crop size
    origin = torch.minimum(lo, size - size.new_tensor([bw, bh])).long()
    return origin[:, 1], origin[:, 0], bh, bw


def _writable_copy(images: Tensor) -> Tensor:
    """A copy of the batch (layout kept where possible) whose (H, W) planes view as (B, C, H*W)."""
    out = images.clone()
    h, w = out.shape[2:]
    if h > 1 and w > 1 and out.stride(2) != w * out.stride(3):  # rows and columns do not merge
        out = out.contiguous()
    return out


def _edge_ramp(normal: Tensor, half: Tensor, dx: Tensor, dy: Tensor, edge_px: float) -> Tensor:
    """(..., B, R, K) in [0, 1]: 1 inside the slab |d . normal| <= half, a linear ramp edge_px wide across its edges.

    ``normal`` is (..., B, 2), ``half`` (..., B), the offsets ``dx`` (B, K) and ``dy`` (B, R).

    The ramp is centred on the edge, so a pixel's coverage approximates the fraction of
    it that the tape covers (box-filter antialiasing; exact for an axis-aligned edge when
    edge_px = 1, slightly crisper below); outside the ramp it is exactly 0, so pixels away
    from the sticker stay bit-identical.
    """
    inv = 1.0 / edge_px
    px = (normal[..., 0:1] * dx * inv)[..., None, :]  # (..., B, 1, K)
    py = (normal[..., 1:2] * dy * inv)[..., :, None]  # (..., B, R, 1)
    ramp = (px + py).abs_()
    # h - |p| rounds exactly as -|p| + h: the same values as a neg_().add_(h), one kernel fewer
    return torch.sub((half * inv + 0.5)[..., None, None], ramp, out=ramp).clamp_(0.0, 1.0)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """z-component of the 2D cross product, (B, 2) x (B, 2) -> (B,)."""
    return a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]


def _points(
    annotations: dict[str, Tensor], key: str, n: int, batch: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    pts = torch.as_tensor(annotations[key])
    if pts.shape != (batch, n, 2):
        raise BackdoorLabError(
            f"trigger 'sticker': annotation '{key}' must be ({batch}, {n}, 2) for this batch, got {tuple(pts.shape)}"
        )
    return pts.to(device=device, dtype=dtype)


def _number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Validate a numeric parameter against [low, high] (ends open as asked); the message names it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"sticker: {name} must be a number, got {value!r}")
    x = float(value)
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if not math.isfinite(x) or too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"sticker: {name} must be in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return x
