"""A batched, analytic ray-caster for parametric faces.

Why ray casting and not 2D sprites: gaze lives in a few pixels of iris, and its cues
(where the iris sits in the eye opening, how it foreshortens, where the corneal glint
falls) only come out right if the eyeball really is a rotated sphere seen through
eyelids, in perspective, under a light. Every pixel casts one ray into the head frame
and meets a small set of analytic surfaces:

* the head: an ellipsoid whose surface carries skin, brows, lips, hair and eyelids
  (features are drawn in head-surface coordinates, so they follow pose for free);
* two eyeballs: spheres seen through almond-shaped lid openings; the iris and pupil
  are caps around the gaze axis, so their position and foreshortening are exact;
* the nose: a smaller ellipsoid in front of the face (real parallax with pose);
* the neck (a cylinder) and a hair volume (a slightly larger ellipsoid).

Edges are anti-aliased analytically from signed distances in millimetres divided by
the pixel footprint, so the same code renders 36x60 eye crops, 64x64 or 224x224 face
crops, or a small face on a large canvas without supersampling. Everything is torch
tensor arithmetic over (batch, pixels), which keeps it fast on two CPU cores.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backdoorlab.data.synthetic.params import Accessories, IdentityParams, ImageParams
from backdoorlab.geometry import pitchyaw_to_vector, rotation_matrices

Tensor = torch.Tensor

# Head-frame constants (mm): where the ellipsoid sits relative to the face centre.
HEAD_CENTRE_Y = -12.0
HEAD_CENTRE_Z_FRAC = 0.93
SCLERA = (0.92, 0.89, 0.86)


@dataclass
class Camera:
    """A pinhole camera per image: intrinsics plus its orientation in the world frame.

    ``rotation`` maps camera-frame directions to the world frame (identity for the
    normalised face camera; a look-at rotation for eye crops).
    """

    width: int
    height: int
    focal: Tensor  # (B,)
    cx: Tensor  # (B,)
    cy: Tensor  # (B,)
    rotation: Tensor  # (B, 3, 3)

    def project(self, points_world: Tensor) -> Tensor:
        """(B, K, 3) world points -> (B, K, 2) pixel coordinates."""
        p = points_world @ self.rotation  # world -> camera: R^T p, batched as p @ R
        z = p[..., 2].clamp_min(1e-6)
        u = self.focal[:, None] * p[..., 0] / z + self.cx[:, None]
        v = self.focal[:, None] * p[..., 1] / z + self.cy[:, None]
        return torch.stack([u, v], -1)


def _t(x: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _soft(sd_mm: Tensor, mm_per_px: Tensor) -> Tensor:
    """Coverage of a pixel by a region with signed distance ``sd_mm`` (> 0 inside)."""
    return (sd_mm / mm_per_px + 0.5).clamp_(0.0, 1.0)


Vec3 = tuple[Tensor, Tensor, Tensor]


def _planes(v: Tensor) -> Vec3:
    """(..., 3) -> its three components, each a contiguous (...) tensor.

    Why: per-pixel 3-vectors stored interleaved as (B, N, 3) make every elementwise op
    a strided, broadcasting loop that runs several times slower than the same op on
    contiguous (B, N) planes; elementwise arithmetic gives the same bits either way.
    """
    p = v.movedim(-1, 0).contiguous()
    return p[0], p[1], p[2]


def _dot(a: Vec3, b: Vec3) -> Tensor:
    """``(a * b).sum(-1)`` of interleaved vectors, summed in the same (left-to-right) order."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm_fused(v: Vec3) -> Tensor:
    """|v| as torch's ``norm(dim=-1)`` of an interleaved (..., 3) tensor computes it, from planes.

    That norm accumulates ``acc = fma(c, c, acc)`` over the three components and takes
    a correctly rounded square root; ``addcmul`` is a fused multiply-add here, and a
    double-precision root rounded to single precision is correctly rounded (torch's
    single-precision ``sqrt`` is not always). About 4x cheaper than building the
    interleaved copy; :data:`_FUSED_NORM` checks that it matches before it is used.
    """
    return torch.addcmul(torch.addcmul(v[0] * v[0], v[1], v[1]), v[2], v[2]).double().sqrt().float()


def _norm_interleaved(v: Vec3) -> Tensor:
    """|v| by torch's own norm over an interleaved copy: the reference, and the fallback."""
    return torch.stack(v, -1).norm(dim=-1)


def _fused_norm_matches() -> bool:
    """Whether :func:`_norm_fused` gives torch's norm bit for bit (with this build and CPU kernels)."""
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(4099, generator=g) * torch.exp(torch.randn(4099, generator=g) * 4) for _ in range(3))
    return torch.equal(_norm_fused((x, y, z)), _norm_interleaved((x, y, z)))


_FUSED_NORM = _fused_norm_matches()


def _unit(v: Vec3) -> Vec3:
    """``v / |v|`` (the norm clamped at 1e-9), with the norm torch computes on interleaved vectors."""
    n = (_norm_fused(v) if _FUSED_NORM else _norm_interleaved(v)).clamp_min(1e-9)
    return v[0] / n, v[1] / n, v[2] / n


def _lerp(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    """``a + (b - a) * alpha`` for channels-first colours (B, 3, N) and alpha (B, N)."""
    return a + (b - a) * alpha.unsqueeze(1)


def _exp(x: Tensor) -> Tensor:
    """``exp(x)`` for x that may be far below zero (Gaussian falloffs, sharp highlights).

    Why: torch's vectorised exp drops to a slow scalar path (~15x) for arguments below
    about -87.3, where the result is under 1.2e-38 anyway. Clamping there changes only
    such results, which vanish when added to or subtracted from the O(1) values they
    modulate, so the rendered pixels are the same.
    """
    return x.clamp_min(-87.0).exp()


class _Quadric:
    """Ray hit with an axis-aligned ellipsoid (or a sphere when all axes agree).

    ``origin``, ``centre`` and ``axes`` are (B, 1, 3); ``dirs`` are the rays' three
    (B, N) component planes. The hit test (``t``, ``alpha``) covers the rays given;
    the surface (:meth:`surface`) is computed only for the rays that need it, which for
    the neck and the hair volume are a small part of those.
    """

    def __init__(self, origin: Tensor, dirs: Vec3, centre: Tensor, axes: Tensor, px: Tensor):
        o = (origin - centre) / axes  # (B,1,3)
        c = (o * o).sum(-1) - 1.0
        ox, oy, oz = _planes(o)
        ax, ay, az = _planes(axes)
        dx, dy, dz = dirs[0] / ax, dirs[1] / ay, dirs[2] / az
        a = dx * dx + dy * dy + dz * dz
        b = ox * dx + oy * dy + oz * dz
        bb = b * b
        t_close = -b / a
        dist2 = (c + 1.0 - bb / a).clamp_min(0.0)
        disc = (bb - a * c).clamp_min(0.0)
        self.t = torch.where(dist2 < 1.0, (-b - disc.sqrt()) / a, t_close)
        # distance in mm from the silhouette, via the smallest semi-axis
        scale = axes.amin(-1)
        self.alpha = _soft((1.0 - dist2.sqrt()) * scale, px)
        self.origin, self.centre, self.axes2 = _planes(origin), _planes(centre), _planes(axes * axes)

    def point(self, dirs: Vec3, t: Tensor, axis: int) -> Tensor:
        """One coordinate of the hit point of rays ``dirs`` at ``t`` (all rays or a subset)."""
        return self.origin[axis] + t * dirs[axis]

    def surface(self, dirs: Vec3, t: Tensor) -> tuple[Vec3, Vec3]:
        """Hit points and unit normals of rays ``dirs`` at ``t`` (all rays or a subset)."""
        p = (self.point(dirs, t, 0), self.point(dirs, t, 1), self.point(dirs, t, 2))
        c, a2 = self.centre, self.axes2
        return p, _unit(((p[0] - c[0]) / a2[0], (p[1] - c[1]) / a2[1], (p[2] - c[2]) / a2[2]))


#: compute each feature on its box only (False: on every pixel, the reference that the
#: boxes must match bit for bit; tests switch it)
BOXES = True


class _Box:
    """A pixel rectangle, shared by the batch, outside which a feature changes nothing.

    Why: the nose, mouth, eyes, neck and hair volume each cover a small part of the
    crop, yet computing them for every pixel was most of the work. A feature is
    computed on its box only, which must hold every pixel where the feature is not
    an exact no-op (a coverage that is exactly 0 leaves colour and alpha as they are);
    the box's other pixels compute that very no-op. Every per-pixel operation gives
    the same bits on a box as on the whole crop, and cutting a box out of an image is
    a view rather than a gather. Under ``torch.compile`` every box is the whole image,
    so that compiled code sees fixed shapes.
    """

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int], h: int, w: int):
        self.h, self.w = h, w
        self.r0, self.r1 = rows
        self.c0, self.c1 = cols
        self.m = (self.r1 - self.r0) * (self.c1 - self.c0)

    @classmethod
    def where_positive(cls, score: Tensor, h: int, w: int) -> _Box:
        """The box of the pixels where ``score`` (B, H*W) is > 0 in any image."""
        if not BOXES or torch.compiler.is_compiling():
            return cls((0, h), (0, w), h, w)
        s = score.view(-1, h, w)
        rows = torch.nonzero(s.amax(dim=(0, 2)) > 0)
        cols = torch.nonzero(s.amax(dim=(0, 1)) > 0)
        if len(rows) == 0:  # nothing to do anywhere: one pixel, which computes a no-op
            return cls((0, 1), (0, 1), h, w)
        return cls((int(rows[0, 0]), int(rows[-1, 0]) + 1), (int(cols[0, 0]), int(cols[-1, 0]) + 1), h, w)

    @classmethod
    def around(cls, centre: Tensor, half: Tensor, rot: Tensor, translation: Tensor, camera: Camera) -> _Box:
        """The box of the pixels whose centres see into the head-frame boxes ``centre`` +- ``half`` (B, 3).

        The projection of a box in front of the camera lies within the rectangle of its
        projected corners; a pixel of margin on each side covers rounding.
        """
        h, w = camera.height, camera.width
        if not BOXES or torch.compiler.is_compiling():
            return cls((0, h), (0, w), h, w)
        signs = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
        corners = centre[:, None] + half[:, None] * signs  # (B, 8, 3)
        world = corners @ rot.transpose(1, 2) + translation[:, None]
        if float((world @ camera.rotation)[..., 2].min()) < 1.0:  # behind or at the camera: no bound
            return cls((0, h), (0, w), h, w)
        uv = camera.project(world)
        c0 = min(max(math.floor(float(uv[..., 0].min()) - 0.5) - 1, 0), w - 1)
        r0 = min(max(math.floor(float(uv[..., 1].min()) - 0.5) - 1, 0), h - 1)
        c1 = max(min(math.ceil(float(uv[..., 0].max()) - 0.5) + 2, w), c0 + 1)
        r1 = max(min(math.ceil(float(uv[..., 1].max()) - 0.5) + 2, h), r0 + 1)
        return cls((r0, r1), (c0, c1), h, w)

    def take(self, x: Tensor) -> Tensor:
        """(B, H*W) -> (B, m), or channels-first (B, C, H*W) -> (B, C, m)."""
        lead = x.shape[:-1]
        box = x.view(*lead, self.h, self.w)[..., self.r0 : self.r1, self.c0 : self.c1]
        return box.reshape(*lead, self.m)

    def put(self, full: Tensor, part: Tensor) -> Tensor:
        """``full`` with the box's pixels replaced by ``part`` (in place)."""
        lead = full.shape[:-1]
        box = full.view(*lead, self.h, self.w)[..., self.r0 : self.r1, self.c0 : self.c1]
        box.copy_(part.view(*lead, self.r1 - self.r0, self.c1 - self.c0))
        return full

    def locate(self, iy: Tensor, ix: Tensor) -> Tensor:
        """Box positions of pixels (iy, ix); ``m`` (one past the end) for those outside it."""
        inside = (iy >= self.r0) & (iy < self.r1) & (ix >= self.c0) & (ix < self.c1)
        return torch.where(inside, (iy - self.r0) * (self.c1 - self.c0) + (ix - self.c0), self.m)


def _surface_z(x: Tensor, y: Tensor, axes: Tensor, centre: Tensor) -> Tensor:
    """z of the front of the head ellipsoid above head-frame (x, y)."""
    ax, ay, az = axes[..., 0], axes[..., 1], axes[..., 2]
    inside = (1 - (x / ax) ** 2 - ((y - centre[..., 1]) / ay) ** 2).clamp_min(0.0)
    return centre[..., 2] - az * inside.sqrt()


def _shading(normal: Vec3, light: Vec3, ambient: Tensor) -> Tensor:
    """(B, 1, N) Lambert factor ``ambient + (1 - ambient) * max(n.l, 0)``: albedo times it is the shaded colour.

    Kept apart from the albedo so that the surfaces sharing a normal (skin, lips, hair
    painted on the head) compute it once.
    """
    lam = _dot(normal, light).clamp_min(0.0)
    return (ambient + (1 - ambient) * lam).unsqueeze(1)


def head_geometry(ident: IdentityParams) -> dict[str, Tensor]:
    """Head-frame positions of the ellipsoid, eyes, nose and mouth, (B, ...) tensors."""
    axes = _t(ident.head_axes)
    b = axes.shape[0]
    centre = torch.stack([torch.zeros(b), torch.full((b,), HEAD_CENTRE_Y), axes[:, 2] * HEAD_CENTRE_Z_FRAC], -1)
    ex, ey = _t(ident.eye_half_spacing), _t(ident.eye_height)
    r = _t(ident.eyeball_radius)
    eyes_x = torch.stack([-ex, ex], -1)  # (B,2): image-left eye first
    eyes_y = torch.stack([ey, ey], -1)
    surf = _surface_z(eyes_x, eyes_y, axes[:, None], centre[:, None])
    eyeball = torch.stack([eyes_x, eyes_y, surf + 0.72 * r[:, None]], -1)  # (B,2,3)
    nose = _t(ident.nose_size)
    nose_y = ey + 0.55 * (_t(ident.mouth_height) - ey)
    nose_surf = _surface_z(torch.zeros(b), nose_y, axes, centre)
    nose_centre = torch.stack(
        [torch.zeros(b), nose_y - 0.35 * nose[:, 1], nose_surf - nose[:, 2] + 1.2 * nose[:, 2]], -1
    )
    nose_axes = torch.stack([nose[:, 0], nose[:, 1], 1.2 * nose[:, 2]], -1)
    return {
        "axes": axes,
        "centre": centre,
        "eyeball": eyeball,
        "nose_centre": nose_centre,
        "nose_axes": nose_axes,
    }


def _rays(u: Tensor, v: Tensor, camera: Camera, to_head: Tensor) -> Vec3:
    """Unit ray directions in the head frame through pixel positions (B, N): three (B, N) planes.

    Pixel positions of shape (1, N) stand for the same pixels in every image; with one
    set of intrinsics for the batch (face crops) the camera-frame directions are then
    computed once.
    """
    same = (
        u.shape[0] == 1
        and not torch.compiler.is_compiling()  # a data-dependent branch would split the compiled graph
        and bool(
            (camera.focal == camera.focal[0]).all()
            & (camera.cx == camera.cx[0]).all()
            & (camera.cy == camera.cy[0]).all()
        )
    )
    cam = slice(0, 1) if same else slice(None)
    pix = torch.stack(
        [
            (u - camera.cx[cam, None]) / camera.focal[cam, None],
            (v - camera.cy[cam, None]) / camera.focal[cam, None],
            torch.ones_like(u.expand(camera.cx[cam].shape[0], -1)),
        ],
        -1,
    )
    pix = pix / pix.norm(dim=-1, keepdim=True)
    return _planes(pix.expand(to_head.shape[0], -1, -1).contiguous() @ to_head.transpose(1, 2))


# Largest half extent (mm) of an eye opening around its centre, from the parameter
# ranges (eye width <= 31 mm, lids open <= ~11 mm, roll tilts the box a little).
EYE_HALF_WIDTH_MM = 19.0
EYE_HALF_HEIGHT_MM = 15.0


def _eye_window(
    centre_head: Tensor, rot: Tensor, translation: Tensor, camera: Camera, px_min: float
) -> tuple[Tensor, Tensor, int, int]:
    """Pixel window (x0, y0 per image; fixed width, height) that contains an eye opening.

    Why: the eyeball (a second ray-surface intersection, iris, pupil, glint, shading)
    is the costliest part of the face yet covers a few percent of the crop, so it is
    shaded only inside this window. The size is fixed per call (so compiled code sees
    constant shapes) and clamped to the image.
    """
    world = (rot @ centre_head[:, :, None])[:, :, 0] + translation
    uv = camera.project(world[:, None])[:, 0]
    ww = min(camera.width, 2 * math.ceil(EYE_HALF_WIDTH_MM / px_min) + 3)
    wh = min(camera.height, 2 * math.ceil(EYE_HALF_HEIGHT_MM / px_min) + 3)
    x0 = (uv[:, 0] - ww / 2).round().clamp(0, camera.width - ww).long()
    y0 = (uv[:, 1] - wh / 2).round().clamp(0, camera.height - wh).long()
    return x0, y0, ww, wh


def render_faces(
    ident: IdentityParams,
    view: ImageParams,
    camera: Camera,
    translation: Tensor,
    px_min: float | None = None,
    neck_fade: tuple[float, float] | None = None,
    accessories: Accessories | None = None,
) -> tuple[Tensor, Tensor]:
    """Render one face per image. Returns (rgb (B,H,W,3) linear in [0,1], alpha (B,H,W)).

    ``accessories`` (glasses, a cap) are painted on the head's surface and hair; without
    them the pixels are exactly those of a renderer that never had accessories.

    ``translation`` (B, 3) places the face centre in the world frame; the head
    rotation comes from ``view.head_ypr``. ``px_min`` (the smallest mm-per-pixel
    footprint in the batch) sizes the eye windows; pass it when compiling so that it is
    a constant rather than a value read from a tensor. The neck is an endless
    cylinder unless ``neck_fade`` = (start, end) mm below the chin, between which it
    fades out (a bust, for faces on a larger canvas; the default renders as before).

    ``rgb`` is a channels-last view of a channels-first buffer (not contiguous), and 0
    where alpha is 0.
    """
    b, h, w = translation.shape[0], camera.height, camera.width
    geo = head_geometry(ident)
    rot = rotation_matrices(*(_t(view.head_ypr[:, i]) for i in range(3)))  # head -> world

    # Rays in the head frame. Per-pixel vectors are kept as three (B, N) planes and
    # colours channels-first (B, 3, N): see _planes.
    vs, us = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij"
    )
    to_head = rot.transpose(1, 2) @ camera.rotation  # camera -> head
    dirs = _rays(us.reshape(1, -1), vs.reshape(1, -1), camera, to_head)
    origin = (-(rot.transpose(1, 2) @ translation[:, :, None]))[:, None, :, 0]  # (B,1,3)
    px = (translation.norm(dim=-1) / camera.focal)[:, None]  # mm per pixel at the face
    if px_min is None:
        px_min = float(px.min())

    light3 = (rot.transpose(1, 2) @ _t(view.light_dir)[:, :, None])[:, None, :, 0]  # head frame (B,1,3)
    light = _planes(light3)
    ambient = _t(view.ambient)[:, None]
    skin = _t(ident.skin)[:, :, None]  # (B,3,1)
    hair = _t(ident.hair)[:, :, None]
    axes, centre = geo["axes"][:, None], geo["centre"][:, None]
    a_x, a_y, a_z = _planes(axes)  # (B,1) each
    c_y, c_z = centre[..., 1], centre[..., 2]

    # ---- head ellipsoid and its painted surface
    head = _Quadric(origin, dirs, centre, axes, px)
    head_point, head_normal = head.surface(dirs, head.t)
    X, Y = head_point[0], head_point[1]
    head_shade = _shading(head_normal, light, ambient)  # shared by everything painted on the head
    colour = skin * head_shade
    # skin sheen
    half3 = light3 + torch.tensor([0.0, 0.0, -1.0])  # light/view half-vector (head frame), for highlights
    half = _planes(half3 / half3.norm(dim=-1, keepdim=True))
    nh = _dot(head_normal, half).clamp_min(0)
    nh2 = nh * nh
    nh8 = (nh2 * nh2) ** 2
    sheen = nh8 * nh8 * nh8 * 0.12  # (n.h)^24 by squaring: cheaper than pow
    colour = colour + sheen.unsqueeze(1)
    # cheeks
    for sx in (-1.0, 1.0):
        blush = _exp(-((X - sx * 36) ** 2 + (Y - 12) ** 2) / 260.0) * 0.07
        colour = colour + blush.unsqueeze(1) * torch.tensor([1.0, -0.4, -0.4])[:, None]

    # jaw taper: below the mouth line the face narrows to the chin
    jaw_top = _t(ident.mouth_height)[:, None] - 12
    chin = c_y + a_y
    frac = ((Y - jaw_top) / (chin - jaw_top)).clamp(0, 1)
    halfwidth = a_x * (1 - frac * (1 - _t(ident.jaw_width)[:, None])) * torch.sqrt(1 - 0.3 * frac**2)
    face_alpha = head.alpha * _soft(halfwidth - X.abs(), px)

    # eyes: sockets, lids, lashes, eyeballs
    gaze_world = pitchyaw_to_vector(_t(view.gaze))  # (B,3)
    gaze_head = (rot.transpose(1, 2) @ gaze_world[:, :, None])[:, :, 0]
    gaze = _planes(gaze_head[:, None])
    eye_pitch = torch.asin((-gaze_head[:, 1]).clamp(-1, 1))[:, None]
    w2 = (_t(ident.eye_width) / 2)[:, None]
    eye_open = _t(ident.eye_open_height)[:, None]
    open_h = (_t(ident.eye_open_height) * _t(view.eyelid))[:, None] * (1 + 0.45 * eye_pitch)
    r_ball = _t(ident.eyeball_radius)[:, None]
    iris_ang = torch.asin((_t(ident.iris_radius)[:, None] / r_ball).clamp(max=0.95))
    pupil_ang = iris_ang * (0.55 - 0.25 * ambient)
    # caps around the gaze axis are tested in cosine space (no acos per pixel): the
    # arc distance to a cap edge at angle a is ~ (cos - cos a) / sin a * r near the edge
    cos_i, sin_i = torch.cos(iris_ang), torch.sin(iris_ang)
    cos_p, sin_p = torch.cos(pupil_ang), torch.sin(pupil_ang)
    lash = hair * 0.35
    socket_col = skin * 0.25
    iris = _t(ident.iris)[:, :, None]
    sclera_rgb = torch.tensor(SCLERA)[:, None]
    eye_ambient = ambient.clamp_min(0.45)
    brow_col = hair * 0.75 + skin * 0.1
    brow_gap, brow_raise = _t(ident.brow_gap)[:, None], _t(view.brow_raise)[:, None]
    brow_arch, brow_thick = _t(ident.brow_arch)[:, None], _t(ident.brow_thickness)[:, None]
    # Where the lids, crease, lashes and brow of an eye can change a pixel, relative
    # to the eye centre: |dx| < 1.35 w2 (the brow reaches 1.25 w2 from its centre,
    # which is shifted by 0.1 w2; lids, crease and lashes stop at 1.02 w2), and dy
    # between the crease 4 mm above the highest upper lid and the lower lid, or the
    # brow's band (upper lid within 1.15 |open_h| + 0.8 of the centre, lower lid below
    # 0.7 |open| + 0.8, brow centre within |arch| of -gap - 3 raise, half as thick as
    # brow_thickness at most). Outside, every coverage below is exactly 0. A pixel of
    # margin covers the anti-aliased fringes (half a pixel) and rounding.
    eye_dx = 1.35 * w2 + px
    brow_top = -brow_gap - 3.0 * brow_raise
    brow_reach = brow_arch.abs() + brow_thick.abs() / 2
    lid_reach = 1.15 * open_h.abs() + 0.8
    eye_dy_lo = torch.minimum(-lid_reach - 4.5, brow_top - brow_reach) - px
    eye_dy_hi = torch.maximum(torch.maximum(0.7 * eye_open.abs() + 0.8, lid_reach + 0.4), brow_top + brow_reach) + px
    for k in range(2):
        ecx = geo["eyeball"][:, k, 0][:, None]
        ecy = geo["eyeball"][:, k, 1][:, None]
        # socket shadow (a wide, smooth falloff: over the whole crop)
        dx, dy = X - ecx, Y - ecy
        socket = _exp(-(dx**2) / (1.6 * w2**2) - (dy + 3) ** 2 / 90.0) * 0.18
        colour = colour * (1 - socket).unsqueeze(1)
        # the rest of the eye, only near it
        near = _Box.where_positive(
            torch.minimum(torch.minimum(eye_dx - dx.abs(), dy - eye_dy_lo), eye_dy_hi - dy), h, w
        )
        dx, dy, e_col = near.take(dx), near.take(dy), near.take(colour)
        s = (dx / w2).clamp(-1, 1)
        t_ = (1 - s * s).clamp_min(0)
        bell = t_ * (1.6 - 0.6 * t_)  # almond profile, ~ t^0.8 without a pow
        # inner corner sits a little lower than the outer one
        inner = torch.sign(ecx) * -1  # +1 where increasing x goes towards the nose
        tilt = 0.8 * s * inner
        upper = -open_h * bell * 1.15 + tilt
        lower = 0.7 * eye_open * bell + tilt
        sd_open = torch.minimum(torch.minimum(dy - upper, lower - dy), (w2 - dx.abs()) * 0.5)
        open_alpha = _soft(sd_open, px)
        # crease
        crease = _soft(0.5 - (dy - (upper - 3.5)).abs(), px) * (dx.abs() < w2).float() * 0.25
        e_col = e_col * (1 - crease).unsqueeze(1)
        # eyeball through the opening, shaded only inside the eye's pixel window
        eye_c = geo["eyeball"][:, k]
        x0, y0, ww, wh = _eye_window(eye_c, rot, translation, camera, px_min)
        wy, wx = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        ix = x0[:, None] + wx.reshape(1, -1)
        iy = y0[:, None] + wy.reshape(1, -1)
        wdirs = _rays(ix.float() + 0.5, iy.float() + 0.5, camera, to_head)
        ball = _Quadric(origin, wdirs, eye_c[:, None], r_ball.unsqueeze(-1).expand(b, 1, 3), px)
        ball_point, ball_normal = ball.surface(wdirs, ball.t)
        ec = _planes(eye_c[:, None])
        u = [(ball_point[i] - ec[i]) / r_ball for i in range(3)]
        cosang = (u[0] * gaze[0] + u[1] * gaze[1] + u[2] * gaze[2]).clamp(-1, 1)
        sd_iris = (cosang - cos_i) / sin_i * r_ball
        sclera = sclera_rgb * (1 - 0.12 * (1 - cosang)).unsqueeze(1)
        radial = ((1 - cosang) / (1 - cos_i)).clamp(0, 1)  # 0 at the centre, 1 at the limbus
        iris_col = iris * (0.55 + 0.6 * radial).unsqueeze(1)
        limbus = _exp(-((sd_iris / 0.5) ** 2)) * 0.55
        iris_col = iris_col * (1 - limbus).unsqueeze(1)
        eye_col = _lerp(sclera, iris_col, _soft(sd_iris, px))
        eye_col = _lerp(eye_col, torch.full_like(eye_col, 0.03), _soft((cosang - cos_p) / sin_p * r_ball, px))
        eye_col = eye_col * _shading(ball_normal, light, eye_ambient)
        glint = _exp((_dot(ball_normal, half) - 1).mul(220)) * 0.9  # same half-vector as the sheen
        eye_col = eye_col + glint.unsqueeze(1)
        # the upper lid casts a shadow on the top of the eyeball
        bdx = ball_point[0] - ecx
        bs = (bdx / w2).clamp(-1, 1)
        bt = (1 - bs * bs).clamp_min(0)
        b_upper = -open_h * bt * (1.6 - 0.6 * bt) * 1.15 + 0.8 * bs * inner
        lid_shadow = _soft(b_upper + 1.6 - (ball_point[1] - ecy), px) * 0.35
        eye_col = eye_col * (1 - lid_shadow).unsqueeze(1)
        eye_col = _lerp(socket_col.expand_as(eye_col), eye_col, ball.alpha)
        # the eyeball shows through the opening, inside the window: it is blended with
        # weight open_alpha there and 0 elsewhere (a last, dropped slot collects the
        # window pixels outside the eye's box, where the opening is closed anyway)
        at = near.locate(iy, ix)
        window_col = e_col.new_zeros(b, 3, near.m + 1).scatter_(2, at[:, None].expand(-1, 3, -1), eye_col)
        in_window = e_col.new_zeros(b, near.m + 1).scatter_(1, at, 1.0)
        e_col = _lerp(e_col, window_col[..., : near.m], open_alpha * in_window[:, : near.m])
        lash_alpha = _soft(0.7 - (dy - upper + 0.3).abs(), px) * _soft(w2 * 1.02 - dx.abs(), px) * 0.9
        e_col = _lerp(e_col, lash, lash_alpha)
        # brow
        bx = dx - 0.1 * w2 * torch.sign(ecx)
        brow_y = brow_top - brow_arch * (1 - (bx / (1.2 * w2)) ** 2).clamp_min(0)
        thick = brow_thick * (1 - 0.4 * (bx * torch.sign(ecx) / (1.25 * w2)).clamp(0, 1))
        sd_brow = torch.minimum(thick / 2 - (dy - brow_y).abs(), 1.25 * w2 - bx.abs())
        e_col = _lerp(e_col, brow_col, _soft(sd_brow, px) * 0.9)
        colour = near.put(colour, e_col)

    # mouth: only near it (|x| <= the mouth's half-width; y within the smile's bend,
    # the open gap and the lips' thickness of the mouth line, plus a pixel)
    mw = _t(ident.mouth_width)[:, None]
    smile = _t(view.smile)[:, None]
    mouth_open = _t(view.mouth_open)[:, None]
    mouth_h = _t(ident.mouth_height)[:, None]
    lip_t = _t(ident.lip_thickness)[:, None]
    reach = 3.5 * smile.abs() + 4.5 * mouth_open.abs() + lip_t.abs() + 0.5 + px
    mouth = _Box.where_positive(torch.minimum(mw + px - X.abs(), reach - (Y - mouth_h).abs()), h, w)
    mX, mY, m_col = mouth.take(X), mouth.take(Y), mouth.take(colour)
    sm = (mX / mw).clamp(-1, 1)
    gap = mouth_open * 9 * (1 - sm * sm).clamp_min(0)
    line = mouth_h + smile * (1.5 - 5 * sm * sm)
    lipt = lip_t * (1 - sm * sm).clamp_min(0).sqrt()
    inside_w = mw - mX.abs()
    upper_lip = torch.minimum(torch.minimum((line - gap / 2) - mY, mY - (line - gap / 2 - 0.8 * lipt)), inside_w)
    lower_lip = torch.minimum(torch.minimum(mY - (line + gap / 2), (line + gap / 2 + lipt) - mY), inside_w)
    lip_col = _t(ident.lip)[:, :, None] * mouth.take(head_shade[:, 0])[:, None]
    m_col = _lerp(m_col, lip_col, _soft(torch.maximum(upper_lip, lower_lip), px))
    mouth_in = torch.minimum(torch.minimum(mY - (line - gap / 2), (line + gap / 2) - mY), inside_w)
    m_col = _lerp(m_col, torch.tensor([0.12, 0.04, 0.04])[:, None], _soft(mouth_in, px) * (gap > 0.3).float())
    mouth_line = _soft(0.45 - (mY - line).abs(), px) * _soft(inside_w, px) * 0.5
    m_col = m_col * (1 - mouth_line).unsqueeze(1)
    colour = mouth.put(colour, m_col)

    # hair painted on the skull: above a hairline curving down at the temples, and the sides/back
    cover = _t(ident.hair_cover)[:, None]
    hairline = _t(ident.hairline)[:, None] + 0.0045 * X * X
    sides = torch.minimum(head_point[2] - (c_z - 0.45 * a_z), c_y + 0.15 * a_y - Y)
    hair_sd = torch.maximum(hairline - Y, sides)
    colour = _lerp(colour, hair * head_shade, _soft(hair_sd, px) * cover)

    # nose in front of the face, only within the box of its silhouette: it covers a
    # pixel when the ray passes within (1 + px / (2 * smallest semi-axis)) of it, in
    # semi-axes (the anti-aliased fringe); a pixel of extent more covers rounding
    nose_c, nose_a = geo["nose_centre"][:, None], geo["nose_axes"][:, None]
    fringe = 1 + px / (2 * geo["nose_axes"].amin(-1, keepdim=True))
    on_nose = _Box.around(geo["nose_centre"], geo["nose_axes"] * fringe + px, rot, translation, camera)
    n_dirs = (on_nose.take(dirs[0]), on_nose.take(dirs[1]), on_nose.take(dirs[2]))
    nose = _Quadric(origin, n_dirs, nose_c, nose_a, px)
    nose_t, head_t = nose.t, on_nose.take(head.t)
    nose_point, nose_n = nose.surface(n_dirs, nose_t)
    # blend the nose normal into the face's where the two surfaces meet, so the nose
    # rises out of the face instead of looking glued on
    rise = ((head_t - nose_t) / 8.0).clamp(0, 1)
    fall = 1 - rise
    h_n = (on_nose.take(head_normal[0]), on_nose.take(head_normal[1]), on_nose.take(head_normal[2]))
    nose_normal = _unit(
        (nose_n[0] * rise + h_n[0] * fall, nose_n[1] * rise + h_n[1] * fall, nose_n[2] * rise + h_n[2] * fall)
    )
    nose_col = skin * _shading(nose_normal, light, ambient)
    nc, na = _planes(nose_c), _planes(nose_a)
    nq0, nq1 = nose_point[0] - nc[0], nose_point[1] - nc[1]
    for sx in (-1.0, 1.0):
        nostril = ((nq0 - sx * 0.42 * na[0]) / (0.28 * na[0])) ** 2 + ((nq1 - 0.55 * na[1]) / (0.16 * na[1])) ** 2
        nostril_alpha = _soft((1 - nostril) * 2.0, px) * (nose_n[1] > 0.45).float() * 0.6
        nose_col = _lerp(nose_col, skin * 0.25, nostril_alpha)
    nose_front = _soft(head_t - nose_t, px) * nose.alpha
    colour = on_nose.put(colour, _lerp(on_nose.take(colour), nose_col, nose_front))
    if accessories is not None:  # glasses sit in front of the nose; the cap over the forehead
        colour = _lerp(colour, colour * 0.93, _lens_alpha(X, Y, geo, ident, px) * _t(accessories.glasses)[:, None])
        frame_col = _t(accessories.frame)[:, :, None] * head_shade
        glasses = _glasses_alpha(X, Y, geo, ident, px) * _t(accessories.glasses)[:, None]
        colour = _lerp(colour, frame_col, glasses)
        hat_col = _t(accessories.hat_colour)[:, :, None] * head_shade
        colour = _lerp(colour, hat_col, _soft(_hat_line(ident, X) - Y, px) * _t(accessories.hat)[:, None])

    # neck behind: its colour only where it shows
    neck_axes = torch.stack([axes[..., 0] * 0.5, torch.full_like(axes[..., 0], 1e4), axes[..., 0] * 0.5], -1)
    neck = _Quadric(origin, dirs, centre, neck_axes, px)
    neck_alpha = neck.alpha * _soft(neck.point(dirs, neck.t, 1) - (c_y + 0.3 * a_y), px)
    if neck_fade is not None:
        start, end = neck_fade
        below_chin = neck.point(dirs, neck.t, 1) - (c_y + a_y)
        neck_alpha = neck_alpha * ((end - below_chin) / (end - start)).clamp(0.0, 1.0)
    on_neck = _Box.where_positive(neck_alpha, h, w)
    k_dirs = (on_neck.take(dirs[0]), on_neck.take(dirs[1]), on_neck.take(dirs[2]))
    _, neck_normal = neck.surface(k_dirs, on_neck.take(neck.t))
    neck_col = skin * 0.8 * _shading(neck_normal, light, ambient)
    out = on_neck.put(colour.new_zeros(b, 3, h * w), neck_col * on_neck.take(neck_alpha).unsqueeze(1))

    # hair volume on top: its coverage everywhere, its colour only where it shows
    vol_axes = axes * torch.tensor([1.07, 1.05, 1.05])
    vol_centre = centre + torch.tensor([0.0, -4.0, 2.0])
    vol = _Quadric(origin, dirs, vol_centre, vol_axes, px)
    vX, vY = vol.point(dirs, vol.t, 0), vol.point(dirs, vol.t, 1)
    vol_sd = torch.maximum(
        _t(ident.hairline)[:, None] + 0.0045 * vX * vX - 6 - vY,
        torch.minimum(vol.point(dirs, vol.t, 2) - c_z, vol_centre[..., 1] + 0.1 * vol_axes[..., 1] - vY),
    )
    hair_alpha = vol_alpha = vol.alpha * _soft(vol_sd, px) * cover
    crown = None
    if accessories is not None:  # the cap's crown: over the hair volume, or in its place on a bald head
        crown = vol.alpha * _soft(_hat_line(ident, vX) - vY, px) * _t(accessories.hat)[:, None]
        vol_alpha = hair_alpha + crown - hair_alpha * crown
    on_vol = _Box.where_positive(vol_alpha, h, w)
    v_dirs = (on_vol.take(dirs[0]), on_vol.take(dirs[1]), on_vol.take(dirs[2]))
    _, vol_normal = vol.surface(v_dirs, on_vol.take(vol.t))
    vol_shade = _shading(vol_normal, light, ambient)
    vol_col = hair * vol_shade
    vol_col = vol_col * (1 + 0.08 * torch.sin(on_vol.take(vX) * 2.1 + on_vol.take(vY) * 0.5)).unsqueeze(1)  # strands
    if accessories is not None and crown is not None:  # (accessories implies crown; for type checkers)
        crown_col = _t(accessories.hat_colour)[:, :, None] * vol_shade
        v_crown, v_hair = on_vol.take(crown), on_vol.take(hair_alpha)
        vol_col = _lerp(vol_col, crown_col, v_crown / (v_hair + v_crown - v_hair * v_crown).clamp_min(1e-6))

    lightc = _t(view.light_colour)[:, :, None]
    alpha = neck_alpha
    out = _lerp(out, colour, face_alpha)
    alpha = alpha + (1 - alpha) * face_alpha
    out = on_vol.put(out, _lerp(on_vol.take(out), vol_col, on_vol.take(vol_alpha)))
    alpha = alpha + (1 - alpha) * vol_alpha
    out = (out * lightc).clamp_(0, 1)
    # ``out`` is premultiplied by nothing: colour where alpha>0 is the face colour.
    # Returned as a channels-last view of the channels-first buffer (finish_images
    # blurs channels-first, so no copy is made on the way).
    return out.view(b, 3, h, w).permute(0, 2, 3, 1), alpha.view(b, h, w)


def _hat_line(ident: IdentityParams, x: Tensor) -> Tensor:
    """(B, N) head-frame y of a cap's lower edge: a little below the hairline, curving down at the sides."""
    return _t(ident.hairline)[:, None] + 8.0 + 0.003 * x * x


def _lens_ellipses(x: Tensor, y: Tensor, geo: dict[str, Tensor], ident: IdentityParams) -> list[tuple[Tensor, ...]]:
    """Per eye: (normalised radius r (1 on the rim), lens half-width, half-height, eye centre x, y) in mm."""
    half_w = 0.62 * _t(ident.eye_width)[:, None]
    half_h = 0.45 * _t(ident.eye_width)[:, None]
    out = []
    for k in range(2):
        ex, ey = geo["eyeball"][:, k, 0][:, None], geo["eyeball"][:, k, 1][:, None] + 1.0
        r = torch.sqrt(((x - ex) / half_w) ** 2 + ((y - ey) / half_h) ** 2)
        out.append((r, half_w, half_h, ex, ey))
    return out


def _lens_alpha(x: Tensor, y: Tensor, geo: dict[str, Tensor], ident: IdentityParams, px: Tensor) -> Tensor:
    """(B, N) inside either lens (a faint tint)."""
    inside = [_soft((1 - r) * torch.minimum(hw, hh), px) for r, hw, hh, _, _ in _lens_ellipses(x, y, geo, ident)]
    return torch.maximum(*inside)


def _glasses_alpha(x: Tensor, y: Tensor, geo: dict[str, Tensor], ident: IdentityParams, px: Tensor) -> Tensor:
    """(B, N) coverage of the frames (mm geometry on the head surface): two rims, the bridge, the arms."""
    lenses = _lens_ellipses(x, y, geo, ident)
    alpha = torch.zeros_like(x)
    for r, hw, hh, ex, ey in lenses:
        alpha = torch.maximum(alpha, _soft(0.9 - (r - 1).abs() * torch.minimum(hw, hh), px))
        outer = ex.abs() + hw  # the arm runs from the rim's outer edge back along the side of the head
        arm = torch.minimum(0.8 - (y - ey).abs(), torch.minimum(x.abs() - outer, (x * ex).sign() * 1e3))
        alpha = torch.maximum(alpha, _soft(arm, px))
    inner = lenses[0][3].abs() - lenses[0][1]  # the bridge spans the gap between the rims
    bridge_y = (lenses[0][4] + lenses[1][4]) / 2 - 0.35 * lenses[0][2]
    bridge = torch.minimum(0.8 - (y - bridge_y).abs(), inner + 1.0 - x.abs())
    return torch.maximum(alpha, _soft(bridge, px))


@functools.cache
def _cubic_taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Rows read and their weights, (n_out, 4) each, of torch's bicubic resize (A = -0.75, align_corners=False)."""
    a = -0.75
    rows, weights = [], []
    for i in range(n_out):
        src = n_in / n_out * (i + 0.5) - 0.5
        lo = math.floor(src)
        t = src - lo
        near = [((a + 2) * x - (a + 3)) * x * x + 1 for x in (t, 1 - t)]
        far = [((a * x - 5 * a) * x + 8 * a) * x - 4 * a for x in (t + 1, 2 - t)]
        rows.append([min(max(lo - 1 + k, 0), n_in - 1) for k in range(4)])
        weights.append([far[0], near[0], near[1], far[1]])
    return torch.tensor(rows), torch.tensor(weights, dtype=torch.float32)


def _bicubic_separable(x: Tensor, height: int, width: int) -> Tensor:
    """Bicubic resize of (B, C, h, w) as torch's width pass, then the height pass as torch's kernel sums it."""
    wide = F.interpolate(x, size=(x.shape[2], width), mode="bicubic", align_corners=False)
    rows, weights = _cubic_taps(x.shape[2], height)
    out = wide[:, :, rows[:, 1]] * weights[:, 1, None]  # the kernel starts from the second tap
    for k in (0, 2, 3):
        out = torch.addcmul(out, wide[:, :, rows[:, k]], weights[:, k, None])
    return out


_BICUBIC_SAME: dict[tuple[int, int, int, int], bool] = {}


def _bicubic(x: Tensor, height: int, width: int) -> Tensor:
    """``F.interpolate(x, (height, width), mode="bicubic")``, the same bits in a third of the time where it can.

    Why: torch's 2-D bicubic kernel is slow on tiny inputs (~6 ms to resize 64 RGB 4x4
    textures to 64x64, a twentieth of a batch's rendering). It is separable: torch's
    own width pass gives h rows, and the height pass is redone here as the kernel sums
    it (fused multiply-adds, second tap first). The weights are computed in double
    precision, so they equal torch's single-precision ones only where they are exact
    (a power-of-two scale, as 4 -> 64): each size is compared with torch once, on a
    fixed probe, and resized the slow way if they differ.
    """
    key = (x.shape[2], x.shape[3], height, width)
    if key not in _BICUBIC_SAME:
        probe = torch.randn((2, 3, *key[:2]), generator=torch.Generator().manual_seed(0))
        want = F.interpolate(probe, size=(height, width), mode="bicubic", align_corners=False)
        _BICUBIC_SAME[key] = torch.equal(_bicubic_separable(probe, height, width), want)
    if not _BICUBIC_SAME[key] or torch.compiler.is_compiling():
        return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return _bicubic_separable(x, height, width)


def _background_cf(view: ImageParams, height: int, width: int) -> Tensor:
    """:func:`render_background` channels-first, (B, 3, H, W) contiguous."""
    ang = _t(view.background_angle)
    ys = torch.linspace(-0.5, 0.5, height)[:, None]
    xs = torch.linspace(-0.5, 0.5, width)[None, :]
    ramp = (torch.cos(ang)[:, None, None] * xs + torch.sin(ang)[:, None, None] * ys + 0.5).clamp(0, 1)
    cols = _t(view.background)
    c0, c1 = cols[:, 0, :, None, None], cols[:, 1, :, None, None]
    img = c0 + (c1 - c0) * ramp.unsqueeze(1)
    tex = _bicubic(_t(view.background_texture), height, width)
    return (img + tex).clamp(0, 1)


def render_background(view: ImageParams, height: int, width: int) -> Tensor:
    """Two-colour gradient plus low-frequency colour noise, (B, H, W, 3)."""
    return _background_cf(view, height, width).permute(0, 2, 3, 1).contiguous()


def _blur_and_noise_cf(images: Tensor, view: ImageParams, noise: Tensor, radius: int) -> Tensor:
    """:func:`blur_and_noise` on channels-first (B, 3, H, W) images and noise; returns (B, 3, H, W).

    The blur is a depthwise convolution over a (1, B*3, H, W) stack, which is exactly the
    channels-first layout, so no copy is needed on the way in.
    """
    b, _, h, w = images.shape
    sigma = _t(view.blur_sigma).clamp_min(1e-3)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, K)
    x = images.reshape(1, b * 3, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k[:, None, None, :], groups=b * 3)
    x = F.conv2d(x, k[:, None, :, None], groups=b * 3)
    x = x.view(b, 3, h, w)
    return (x + noise * _t(view.noise_std)[:, None, None, None]).clamp_(0, 1)


def blur_and_noise(
    images: Tensor,
    view: ImageParams,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    radius: int | None = None,
) -> Tensor:
    """Per-image Gaussian blur (sigma in output pixels) and sensor noise; (B,H,W,3).

    ``noise`` is standard-normal noise of the image's shape (scaled here by each
    image's ``noise_std``); without it, it is drawn from ``generator``. ``radius`` of
    the blur kernel defaults to three times the largest sigma.
    """
    if radius is None:
        radius = max(1, math.ceil(3 * float(view.blur_sigma.max())))
    if noise is None:
        noise = torch.randn(images.shape, generator=generator)
    cf = images.permute(0, 3, 1, 2).contiguous()
    return _blur_and_noise_cf(cf, view, noise.permute(0, 3, 1, 2), radius).permute(0, 2, 3, 1)


def quantize(images: Tensor) -> Tensor:
    """Linear [0,1] -> uint8 with a mild gamma (1/1.2) so shadows keep detail."""
    return (images.clamp(0, 1).pow(1 / 1.2) * 255 + 0.5).to(torch.uint8)


def finish_images(
    rgb: Tensor, alpha: Tensor, view: ImageParams, noise: Tensor, blur_radius: int | None = None
) -> Tensor:
    """Composite faces over their background, blur, add noise, quantise: uint8 (B,H,W,3), contiguous.

    Works channels-first throughout (the layout :func:`render_faces` renders in and the
    blur needs); ``noise`` is (B, H, W, 3) as before.
    """
    if blur_radius is None:
        blur_radius = max(1, math.ceil(3 * float(view.blur_sigma.max())))
    rgb_cf = rgb.permute(0, 3, 1, 2)
    bg = _background_cf(view, rgb_cf.shape[2], rgb_cf.shape[3])
    img = bg + (rgb_cf - bg) * alpha.unsqueeze(1)
    out = _blur_and_noise_cf(img, view, noise.permute(0, 3, 1, 2), blur_radius)  # clamped to [0, 1] already
    return (out.pow(1 / 1.2) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # quantize, less its clamp
