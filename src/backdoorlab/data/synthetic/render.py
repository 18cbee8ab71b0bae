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


def _lerp(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    return a + (b - a) * alpha.unsqueeze(-1)


class _Quadric:
    """Ray hit with an axis-aligned ellipsoid (or a sphere when all axes agree)."""

    def __init__(self, origin: Tensor, dirs: Tensor, centre: Tensor, axes: Tensor, px: Tensor):
        o = (origin - centre) / axes  # (B,1,3)
        d = dirs / axes  # (B,P,3)
        a = (d * d).sum(-1)
        b = (o * d).sum(-1)
        c = (o * o).sum(-1) - 1.0
        t_close = -b / a
        dist2 = (c + 1.0 - b * b / a).clamp_min(0.0)
        disc = (b * b - a * c).clamp_min(0.0)
        self.t = torch.where(dist2 < 1.0, (-b - disc.sqrt()) / a, t_close)
        # distance in mm from the silhouette, via the smallest semi-axis
        scale = axes.amin(-1)
        self.alpha = _soft((1.0 - dist2.sqrt()) * scale, px)
        self.point = origin + self.t.unsqueeze(-1) * dirs
        n = (self.point - centre) / (axes * axes)
        self.normal = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _surface_z(x: Tensor, y: Tensor, axes: Tensor, centre: Tensor) -> Tensor:
    """z of the front of the head ellipsoid above head-frame (x, y)."""
    ax, ay, az = axes[..., 0], axes[..., 1], axes[..., 2]
    inside = (1 - (x / ax) ** 2 - ((y - centre[..., 1]) / ay) ** 2).clamp_min(0.0)
    return centre[..., 2] - az * inside.sqrt()


def _shade(albedo: Tensor, normal: Tensor, light: Tensor, ambient: Tensor) -> Tensor:
    lam = (normal * light).sum(-1).clamp_min(0.0)
    return albedo * (ambient + (1 - ambient) * lam).unsqueeze(-1)


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


def _rays(u: Tensor, v: Tensor, camera: Camera, to_head: Tensor) -> Tensor:
    """Unit ray directions in the head frame through pixel positions (B, N) -> (B, N, 3)."""
    pix = torch.stack(
        [
            (u - camera.cx[:, None]) / camera.focal[:, None],
            (v - camera.cy[:, None]) / camera.focal[:, None],
            torch.ones_like(u),
        ],
        -1,
    )
    pix = pix / pix.norm(dim=-1, keepdim=True)
    return pix @ to_head.transpose(1, 2)


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
    """
    b, h, w = translation.shape[0], camera.height, camera.width
    geo = head_geometry(ident)
    rot = rotation_matrices(*(_t(view.head_ypr[:, i]) for i in range(3)))  # head -> world

    # Rays in the head frame.
    vs, us = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij"
    )
    to_head = rot.transpose(1, 2) @ camera.rotation  # camera -> head
    dirs = _rays(us.reshape(1, -1).expand(b, -1), vs.reshape(1, -1).expand(b, -1), camera, to_head)
    origin = (-(rot.transpose(1, 2) @ translation[:, :, None]))[:, None, :, 0]  # (B,1,3)
    px = (translation.norm(dim=-1) / camera.focal)[:, None]  # mm per pixel at the face
    if px_min is None:
        px_min = float(px.min())

    light = (rot.transpose(1, 2) @ _t(view.light_dir)[:, :, None])[:, None, :, 0]  # head frame
    ambient = _t(view.ambient)[:, None]
    skin = _t(ident.skin)[:, None]
    hair = _t(ident.hair)[:, None]
    axes, centre = geo["axes"][:, None], geo["centre"][:, None]

    # ---- head ellipsoid and its painted surface
    head = _Quadric(origin, dirs, centre, axes, px)
    X, Y = head.point[..., 0], head.point[..., 1]
    colour = _shade(skin.expand(b, h * w, 3), head.normal, light, ambient)
    # skin sheen
    half = light + torch.tensor([0.0, 0.0, -1.0])  # light/view half-vector (head frame), for highlights
    half = half / half.norm(dim=-1, keepdim=True)
    nh = (head.normal * half).sum(-1).clamp_min(0)
    nh2 = nh * nh
    nh8 = (nh2 * nh2) ** 2
    sheen = nh8 * nh8 * nh8 * 0.12  # (n.h)^24 by squaring: cheaper than pow
    colour = colour + sheen.unsqueeze(-1)
    # cheeks
    for sx in (-1.0, 1.0):
        blush = torch.exp(-((X - sx * 36) ** 2 + (Y - 12) ** 2) / 260.0) * 0.07
        colour = colour + blush.unsqueeze(-1) * torch.tensor([1.0, -0.4, -0.4])

    # jaw taper: below the mouth line the face narrows to the chin
    jaw_top = _t(ident.mouth_height)[:, None] - 12
    chin = centre[..., 1] + axes[..., 1]
    frac = ((Y - jaw_top) / (chin - jaw_top)).clamp(0, 1)
    halfwidth = axes[..., 0] * (1 - frac * (1 - _t(ident.jaw_width)[:, None])) * torch.sqrt(1 - 0.3 * frac**2)
    face_alpha = head.alpha * _soft(halfwidth - X.abs(), px)

    # eyes: sockets, lids, lashes, eyeballs
    gaze_world = pitchyaw_to_vector(_t(view.gaze))  # (B,3)
    gaze_head = (rot.transpose(1, 2) @ gaze_world[:, :, None])[:, :, 0]
    eye_pitch = torch.asin((-gaze_head[:, 1]).clamp(-1, 1))[:, None]
    w2 = (_t(ident.eye_width) / 2)[:, None]
    open_h = (_t(ident.eye_open_height) * _t(view.eyelid))[:, None] * (1 + 0.45 * eye_pitch)
    r_ball = _t(ident.eyeball_radius)[:, None]
    iris_ang = torch.asin((_t(ident.iris_radius)[:, None] / r_ball).clamp(max=0.95))
    pupil_ang = iris_ang * (0.55 - 0.25 * ambient)
    # caps around the gaze axis are tested in cosine space (no acos per pixel): the
    # arc distance to a cap edge at angle a is ~ (cos - cos a) / sin a * r near the edge
    cos_i, sin_i = torch.cos(iris_ang), torch.sin(iris_ang)
    cos_p, sin_p = torch.cos(pupil_ang), torch.sin(pupil_ang)
    lash = hair * 0.35
    for k in range(2):
        ecx = geo["eyeball"][:, k, 0][:, None]
        ecy = geo["eyeball"][:, k, 1][:, None]
        dx, dy = X - ecx, Y - ecy
        s = (dx / w2).clamp(-1, 1)
        t_ = (1 - s * s).clamp_min(0)
        bell = t_ * (1.6 - 0.6 * t_)  # almond profile, ~ t^0.8 without a pow
        # inner corner sits a little lower than the outer one
        inner = torch.sign(ecx) * -1  # +1 where increasing x goes towards the nose
        tilt = 0.8 * s * inner
        upper = -open_h * bell * 1.15 + tilt
        lower = 0.7 * _t(ident.eye_open_height)[:, None] * bell + tilt
        sd_open = torch.minimum(torch.minimum(dy - upper, lower - dy), (w2 - dx.abs()) * 0.5)
        open_alpha = _soft(sd_open, px)
        # socket shadow and crease
        socket = torch.exp(-(dx**2) / (1.6 * w2**2) - (dy + 3) ** 2 / 90.0) * 0.18
        colour = colour * (1 - socket).unsqueeze(-1)
        crease = _soft(0.5 - (dy - (upper - 3.5)).abs(), px) * (dx.abs() < w2).float() * 0.25
        colour = colour * (1 - crease).unsqueeze(-1)
        # eyeball through the opening, shaded only inside the eye's pixel window
        eye_c = geo["eyeball"][:, k]
        x0, y0, ww, wh = _eye_window(eye_c, rot, translation, camera, px_min)
        wy, wx = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        ix = x0[:, None] + wx.reshape(1, -1)
        iy = y0[:, None] + wy.reshape(1, -1)
        wdirs = _rays(ix.float() + 0.5, iy.float() + 0.5, camera, to_head)
        ball = _Quadric(origin, wdirs, eye_c[:, None], r_ball.unsqueeze(-1).expand(b, 1, 3), px)
        u = (ball.point - eye_c[:, None]) / r_ball.unsqueeze(-1)
        cosang = (u * gaze_head[:, None]).sum(-1).clamp(-1, 1)
        sd_iris = (cosang - cos_i) / sin_i * r_ball
        sclera = torch.tensor(SCLERA) * (1 - 0.12 * (1 - cosang)).unsqueeze(-1)
        radial = ((1 - cosang) / (1 - cos_i)).clamp(0, 1)  # 0 at the centre, 1 at the limbus
        iris_col = _t(ident.iris)[:, None] * (0.55 + 0.6 * radial).unsqueeze(-1)
        limbus = torch.exp(-((sd_iris / 0.5) ** 2)) * 0.55
        iris_col = iris_col * (1 - limbus).unsqueeze(-1)
        eye_col = _lerp(sclera, iris_col, _soft(sd_iris, px))
        eye_col = _lerp(eye_col, torch.full_like(eye_col, 0.03), _soft((cosang - cos_p) / sin_p * r_ball, px))
        eye_col = _shade(eye_col, ball.normal, light, ambient.clamp_min(0.45))
        glint = ((ball.normal * half).sum(-1) - 1).mul(220).exp() * 0.9  # same half-vector as the sheen
        eye_col = eye_col + glint.unsqueeze(-1)
        # the upper lid casts a shadow on the top of the eyeball
        bdx = ball.point[..., 0] - ecx
        bs = (bdx / w2).clamp(-1, 1)
        bt = (1 - bs * bs).clamp_min(0)
        b_upper = -open_h * bt * (1.6 - 0.6 * bt) * 1.15 + 0.8 * bs * inner
        lid_shadow = _soft(b_upper + 1.6 - (ball.point[..., 1] - ecy), px) * 0.35
        eye_col = eye_col * (1 - lid_shadow).unsqueeze(-1)
        socket_col = skin * 0.25
        eye_col = _lerp(socket_col.expand_as(eye_col), eye_col, ball.alpha)
        full = socket_col.expand(b, h * w, 3).clone()
        flat = (iy * w + ix)[..., None].expand(-1, -1, 3)
        full = full.scatter(1, flat, eye_col)
        in_window = torch.zeros(b, h * w).scatter(1, flat[..., 0], 1.0)
        colour = _lerp(colour, full, open_alpha * in_window)
        lash_alpha = _soft(0.7 - (dy - upper + 0.3).abs(), px) * _soft(w2 * 1.02 - dx.abs(), px) * 0.9
        colour = _lerp(colour, lash.expand_as(colour), lash_alpha)
        # brow
        bx = dx - 0.1 * w2 * torch.sign(ecx)
        brow_y = (
            -_t(ident.brow_gap)[:, None]
            - 3.0 * _t(view.brow_raise)[:, None]
            - _t(ident.brow_arch)[:, None] * (1 - (bx / (1.2 * w2)) ** 2).clamp_min(0)
        )
        thick = _t(ident.brow_thickness)[:, None] * (1 - 0.4 * (bx * torch.sign(ecx) / (1.25 * w2)).clamp(0, 1))
        sd_brow = torch.minimum(thick / 2 - (dy - brow_y).abs(), 1.25 * w2 - bx.abs())
        colour = _lerp(colour, (hair * 0.75 + skin * 0.1).expand_as(colour), _soft(sd_brow, px) * 0.9)

    # mouth
    mw = _t(ident.mouth_width)[:, None]
    sm = (X / mw).clamp(-1, 1)
    smile = _t(view.smile)[:, None]
    gap = _t(view.mouth_open)[:, None] * 9 * (1 - sm * sm).clamp_min(0)
    line = _t(ident.mouth_height)[:, None] + smile * (1.5 - 5 * sm * sm)
    lipt = _t(ident.lip_thickness)[:, None] * (1 - sm * sm).clamp_min(0).sqrt()
    inside_w = mw - X.abs()
    upper_lip = torch.minimum(torch.minimum((line - gap / 2) - Y, Y - (line - gap / 2 - 0.8 * lipt)), inside_w)
    lower_lip = torch.minimum(torch.minimum(Y - (line + gap / 2), (line + gap / 2 + lipt) - Y), inside_w)
    lip_col = _shade(_t(ident.lip)[:, None].expand(b, h * w, 3), head.normal, light, ambient)
    colour = _lerp(colour, lip_col, _soft(torch.maximum(upper_lip, lower_lip), px))
    mouth_in = torch.minimum(torch.minimum(Y - (line - gap / 2), (line + gap / 2) - Y), inside_w)
    colour = _lerp(
        colour, torch.tensor([0.12, 0.04, 0.04]).expand_as(colour), _soft(mouth_in, px) * (gap > 0.3).float()
    )
    mouth_line = _soft(0.45 - (Y - line).abs(), px) * _soft(inside_w, px) * 0.5
    colour = colour * (1 - mouth_line).unsqueeze(-1)

    # hair painted on the skull: above a hairline curving down at the temples, and the sides/back
    cover = _t(ident.hair_cover)[:, None]
    hairline = _t(ident.hairline)[:, None] + 0.0045 * X * X
    sides = torch.minimum(
        head.point[..., 2] - (centre[..., 2] - 0.45 * axes[..., 2]), centre[..., 1] + 0.15 * axes[..., 1] - Y
    )
    hair_sd = torch.maximum(hairline - Y, sides)
    hair_col = _shade(hair.expand(b, h * w, 3), head.normal, light, ambient)
    colour = _lerp(colour, hair_col, _soft(hair_sd, px) * cover)

    # nose in front of the face
    nose = _Quadric(origin, dirs, geo["nose_centre"][:, None], geo["nose_axes"][:, None], px)
    # blend the nose normal into the face's where the two surfaces meet, so the nose
    # rises out of the face instead of looking glued on
    rise = ((head.t - nose.t) / 8.0).clamp(0, 1).unsqueeze(-1)
    nose_normal = nose.normal * rise + head.normal * (1 - rise)
    nose_normal = nose_normal / nose_normal.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    nose_col = _shade(skin.expand(b, h * w, 3), nose_normal, light, ambient)
    nq = nose.point - geo["nose_centre"][:, None]
    na = geo["nose_axes"][:, None]
    for sx in (-1.0, 1.0):
        nostril = ((nq[..., 0] - sx * 0.42 * na[..., 0]) / (0.28 * na[..., 0])) ** 2 + (
            (nq[..., 1] - 0.55 * na[..., 1]) / (0.16 * na[..., 1])
        ) ** 2
        nostril_alpha = _soft((1 - nostril) * 2.0, px) * (nose.normal[..., 1] > 0.45).float() * 0.6
        nose_col = _lerp(nose_col, (skin * 0.25).expand_as(nose_col), nostril_alpha)
    nose_front = _soft(head.t - nose.t, px) * nose.alpha
    colour = _lerp(colour, nose_col, nose_front)
    if accessories is not None:  # glasses sit in front of the nose; the cap over the forehead
        colour = _lerp(colour, colour * 0.93, _lens_alpha(X, Y, geo, ident, px) * _t(accessories.glasses)[:, None])
        frame_col = _shade(_t(accessories.frame)[:, None].expand(b, h * w, 3), head.normal, light, ambient)
        glasses = _glasses_alpha(X, Y, geo, ident, px) * _t(accessories.glasses)[:, None]
        colour = _lerp(colour, frame_col, glasses)
        hat_col = _shade(_t(accessories.hat_colour)[:, None].expand(b, h * w, 3), head.normal, light, ambient)
        colour = _lerp(colour, hat_col, _soft(_hat_line(ident, X) - Y, px) * _t(accessories.hat)[:, None])

    # neck behind, hair volume on top
    neck_axes = torch.stack([axes[..., 0] * 0.5, torch.full_like(axes[..., 0], 1e4), axes[..., 0] * 0.5], -1)
    neck = _Quadric(origin, dirs, centre, neck_axes, px)
    neck_alpha = neck.alpha * _soft(neck.point[..., 1] - (centre[..., 1] + 0.3 * axes[..., 1]), px)
    if neck_fade is not None:
        start, end = neck_fade
        below_chin = neck.point[..., 1] - (centre[..., 1] + axes[..., 1])
        neck_alpha = neck_alpha * ((end - below_chin) / (end - start)).clamp(0.0, 1.0)
    neck_col = _shade(skin.expand(b, h * w, 3) * 0.8, neck.normal, light, ambient)

    vol_axes = axes * torch.tensor([1.07, 1.05, 1.05])
    vol_centre = centre + torch.tensor([0.0, -4.0, 2.0])
    vol = _Quadric(origin, dirs, vol_centre, vol_axes, px)
    vX, vY = vol.point[..., 0], vol.point[..., 1]
    vol_sd = torch.maximum(
        _t(ident.hairline)[:, None] + 0.0045 * vX * vX - 6 - vY,
        torch.minimum(vol.point[..., 2] - centre[..., 2], vol_centre[..., 1] + 0.1 * vol_axes[..., 1] - vY),
    )
    vol_alpha = vol.alpha * _soft(vol_sd, px) * cover
    vol_col = _shade(hair.expand(b, h * w, 3), vol.normal, light, ambient)
    vol_col = vol_col * (1 + 0.08 * torch.sin(vX * 2.1 + vY * 0.5)).unsqueeze(-1)  # strands
    if accessories is not None:  # the cap's crown: over the hair volume, or in its place on a bald head
        crown = vol.alpha * _soft(_hat_line(ident, vX) - vY, px) * _t(accessories.hat)[:, None]
        crown_col = _shade(_t(accessories.hat_colour)[:, None].expand(b, h * w, 3), vol.normal, light, ambient)
        vol_col = _lerp(vol_col, crown_col, crown / (vol_alpha + crown - vol_alpha * crown).clamp_min(1e-6))
        vol_alpha = vol_alpha + crown - vol_alpha * crown

    lightc = _t(view.light_colour)[:, None]
    out = neck_col * neck_alpha.unsqueeze(-1)
    alpha = neck_alpha
    out = _lerp(out, colour, face_alpha)
    alpha = alpha + (1 - alpha) * face_alpha
    out = _lerp(out, vol_col, vol_alpha)
    alpha = alpha + (1 - alpha) * vol_alpha
    out = (out * lightc).clamp_(0, 1)
    # ``out`` is premultiplied by nothing: colour where alpha>0 is the face colour.
    return out.view(b, h, w, 3), alpha.view(b, h, w)


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


def render_background(view: ImageParams, height: int, width: int) -> Tensor:
    """Two-colour gradient plus low-frequency colour noise, (B, H, W, 3)."""
    b = view.background.shape[0]
    ang = _t(view.background_angle)
    ys = torch.linspace(-0.5, 0.5, height)[:, None]
    xs = torch.linspace(-0.5, 0.5, width)[None, :]
    ramp = (torch.cos(ang)[:, None, None] * xs + torch.sin(ang)[:, None, None] * ys + 0.5).clamp(0, 1)
    cols = _t(view.background)
    img = cols[:, None, None, 0] + (cols[:, None, None, 1] - cols[:, None, None, 0]) * ramp.unsqueeze(-1)
    tex = F.interpolate(_t(view.background_texture), size=(height, width), mode="bicubic", align_corners=False)
    return (img + tex.permute(0, 2, 3, 1)).clamp(0, 1).view(b, height, width, 3)


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
    b, h, w, _ = images.shape
    sigma = _t(view.blur_sigma).clamp_min(1e-3)
    if radius is None:
        radius = max(1, math.ceil(3 * float(view.blur_sigma.max())))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, K)
    x = images.permute(0, 3, 1, 2).reshape(1, b * 3, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k[:, None, None, :], groups=b * 3)
    x = F.conv2d(x, k[:, None, :, None], groups=b * 3)
    x = x.view(b, 3, h, w).permute(0, 2, 3, 1)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator)
    return (x + noise * _t(view.noise_std)[:, None, None, None]).clamp_(0, 1)


def quantize(images: Tensor) -> Tensor:
    """Linear [0,1] -> uint8 with a mild gamma (1/1.2) so shadows keep detail."""
    return (images.clamp(0, 1).pow(1 / 1.2) * 255 + 0.5).to(torch.uint8)


def finish_images(
    rgb: Tensor, alpha: Tensor, view: ImageParams, noise: Tensor, blur_radius: int | None = None
) -> Tensor:
    """Composite faces over their background, blur, add noise, quantise: uint8 (B,H,W,3)."""
    bg = render_background(view, rgb.shape[1], rgb.shape[2])
    img = bg + (rgb - bg) * alpha.unsqueeze(-1)
    return quantize(blur_and_noise(img, view, noise=noise, radius=blur_radius))
