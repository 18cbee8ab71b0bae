"""Parameters of a synthetic face: who it is (identity) and how it is seen (per image).

Why two groups: gaze, detection and recognition all need the same split. Identity
parameters persist across every image of a person (so recognition has identities and
gaze has cross-subject splits); per-image parameters vary freely, and gaze and head
pose are drawn independently so that a model cannot read gaze off head pose.

All lengths are millimetres in the head frame (x right, y down, z into the head; the
face looks along -z); all angles are radians. Parameters are stored as float32 arrays
with one row per face so the renderer can work on a batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Self, TypeVar

import numpy as np

from backdoorlab.geometry import pitchyaw_to_vector

# Palettes (linear-ish RGB in [0, 1]); a face mixes neighbouring entries.
SKIN_TONES = np.array(
    [
        [0.98, 0.84, 0.74],
        [0.93, 0.75, 0.62],
        [0.80, 0.60, 0.46],
        [0.62, 0.43, 0.30],
        [0.45, 0.30, 0.20],
        [0.32, 0.21, 0.14],
    ],
    dtype=np.float32,
)
IRIS_COLOURS = np.array(
    [
        [0.30, 0.17, 0.08],
        [0.18, 0.10, 0.05],
        [0.45, 0.33, 0.15],
        [0.30, 0.42, 0.25],
        [0.30, 0.48, 0.70],
        [0.45, 0.50, 0.55],
    ],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],
        [0.20, 0.12, 0.07],
        [0.40, 0.26, 0.14],
        [0.75, 0.60, 0.35],
        [0.55, 0.22, 0.10],
        [0.60, 0.60, 0.60],
    ],
    dtype=np.float32,
)


class Rows:
    """A parameter set of one row per face, every field an array along its first axis."""

    def take(self, idx: np.ndarray) -> Self:
        """Rows ``idx`` (e.g. an identity repeated for each of its images)."""
        return type(self)(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})  # type: ignore[arg-type]


RowsT = TypeVar("RowsT", bound=Rows)


@dataclass
class IdentityParams(Rows):
    """Per-person shape and appearance, one row per face in a batch."""

    head_axes: np.ndarray  # (B, 3) ellipsoid semi-axes
    jaw_width: np.ndarray  # (B,) half-width of the chin relative to the head width
    skin: np.ndarray  # (B, 3)
    eye_half_spacing: np.ndarray  # (B,) eye centre x offset
    eye_height: np.ndarray  # (B,) eye centre y (negative = above the face centre)
    eyeball_radius: np.ndarray  # (B,)
    eye_width: np.ndarray  # (B,) corner-to-corner width of the eye opening
    eye_open_height: np.ndarray  # (B,) half-height of the fully open eye
    iris_radius: np.ndarray  # (B,) mm on the eyeball surface
    iris: np.ndarray  # (B, 3)
    brow_thickness: np.ndarray  # (B,)
    brow_gap: np.ndarray  # (B,) brow height above the eye centre
    brow_arch: np.ndarray  # (B,)
    nose_size: np.ndarray  # (B, 3) half-width, half-length, protrusion
    mouth_width: np.ndarray  # (B,) half-width
    mouth_height: np.ndarray  # (B,) y of the mouth line
    lip_thickness: np.ndarray  # (B,)
    lip: np.ndarray  # (B, 3)
    hair: np.ndarray  # (B, 3)
    hairline: np.ndarray  # (B,) y of the hairline at the centre
    hair_cover: np.ndarray  # (B,) 0 = bald, 1 = full hair


@dataclass
class ImageParams(Rows):
    """Per-image pose, gaze, expression, lighting and camera effects."""

    head_ypr: np.ndarray  # (B, 3) yaw, pitch, roll of the head in the camera frame
    gaze: np.ndarray  # (B, 2) pitch, yaw of both eyes in the camera frame (the label)
    eyelid: np.ndarray  # (B,) openness, 1 = fully open
    smile: np.ndarray  # (B,)
    mouth_open: np.ndarray  # (B,)
    brow_raise: np.ndarray  # (B,)
    light_dir: np.ndarray  # (B, 3) unit vector towards the light, camera frame
    light_colour: np.ndarray  # (B, 3)
    ambient: np.ndarray  # (B,)
    background: np.ndarray  # (B, 2, 3) two colours of the background gradient
    background_angle: np.ndarray  # (B,)
    background_texture: np.ndarray  # (B, 3, 4, 4) low-frequency colour noise
    blur_sigma: np.ndarray  # (B,) pixels of the output image
    noise_std: np.ndarray  # (B,)


@dataclass
class Accessories(Rows):
    """What a face wears in one image (one row per face): glasses and a cap, each on (1) or off (0).

    Kept apart from :class:`ImageParams` so that the data sets rendered before
    accessories existed draw the same random numbers and keep their bytes.
    """

    glasses: np.ndarray  # (B,) 0/1: thin frames over both eyes, bridge and arms
    frame: np.ndarray  # (B, 3) frame colour
    hat: np.ndarray  # (B,) 0/1: a cap over the top of the head and the hair
    hat_colour: np.ndarray  # (B, 3)


def concat_rows(parts: Sequence[RowsT]) -> RowsT:
    """One parameter set (IdentityParams, ImageParams, Accessories) holding the rows of ``parts`` in order."""
    fields_ = fields(parts[0])  # type: ignore[arg-type]
    return type(parts[0])(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields_})


def sample_accessories(
    rng: np.random.Generator, n: int, glasses_rate: float | np.ndarray, hat_rate: float | np.ndarray
) -> Accessories:
    """``n`` faces' accessories: each worn with its rate (a number, or one per face), colours drawn."""
    f32 = np.float32
    frame = np.where(rng.uniform(0, 1, (n, 1)) < 0.7, rng.uniform(0.02, 0.12, (n, 3)), rng.uniform(0.3, 0.8, (n, 3)))
    return Accessories(
        glasses=(rng.uniform(0, 1, n) < glasses_rate).astype(f32),
        frame=frame.astype(f32),
        hat=(rng.uniform(0, 1, n) < hat_rate).astype(f32),
        hat_colour=rng.uniform(0.05, 0.9, (n, 3)).astype(f32),
    )


@dataclass(frozen=True)
class SamplingRanges:
    """Ranges of the per-image distribution; defaults resemble MPIIFaceGaze.

    ``max_eye_in_head`` is the largest eye rotation relative to the head a person can
    make (about 40 degrees); pairs of independently drawn gaze and head pose that
    exceed it are redrawn, which is the only coupling between the two.
    """

    gaze_pitch: tuple[float, float] = (-0.5, 0.5)
    gaze_yaw: tuple[float, float] = (-0.5, 0.5)
    head_pitch_std: float = 0.2
    head_yaw_std: float = 0.25
    head_roll_std: float = 0.06
    head_limit: float = 0.6
    max_eye_in_head: float = 0.7
    blur_max: float = 0.7
    noise_max: float = 0.03


def _mix(palette: np.ndarray, rng: np.random.Generator, n: int, jitter: float) -> np.ndarray:
    """Blend two neighbouring palette entries and jitter, for a continuum of colours."""
    pos = rng.uniform(0, len(palette) - 1, n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(palette) - 1)
    w = (pos - lo)[:, None]
    col = palette[lo] * (1 - w) + palette[hi] * w
    col = col * rng.uniform(1 - jitter, 1 + jitter, (n, 3))
    return np.clip(col, 0, 1).astype(np.float32)


def sample_identities(rng: np.random.Generator, n: int) -> IdentityParams:
    """Draw ``n`` people."""
    u = rng.uniform
    f32 = np.float32
    head_axes = np.stack([u(68, 80, n), u(90, 106, n), u(82, 96, n)], 1).astype(f32)
    hair = _mix(HAIR_COLOURS, rng, n, 0.15)
    skin = _mix(SKIN_TONES, rng, n, 0.06)
    lip = np.clip(skin * np.array([0.85, 0.55, 0.55], f32) + np.array([0.08, 0.0, 0.0], f32), 0, 1)
    return IdentityParams(
        head_axes=head_axes,
        jaw_width=u(0.55, 0.8, n).astype(f32),
        skin=skin,
        eye_half_spacing=u(29, 34, n).astype(f32),
        eye_height=u(-27, -21, n).astype(f32),
        eyeball_radius=u(11.5, 12.5, n).astype(f32),
        eye_width=u(25, 31, n).astype(f32),
        eye_open_height=u(4.5, 6.5, n).astype(f32),
        iris_radius=u(5.6, 6.4, n).astype(f32),
        iris=_mix(IRIS_COLOURS, rng, n, 0.15),
        brow_thickness=u(2.5, 5.5, n).astype(f32),
        brow_gap=u(11, 16, n).astype(f32),
        brow_arch=u(0.0, 5.0, n).astype(f32),
        nose_size=np.stack([u(9, 13, n), u(20, 27, n), u(15, 22, n)], 1).astype(f32),
        mouth_width=u(20, 27, n).astype(f32),
        mouth_height=u(33, 40, n).astype(f32),
        lip_thickness=u(3.0, 6.0, n).astype(f32),
        lip=lip.astype(f32),
        hair=hair,
        hairline=u(-68, -52, n).astype(f32),
        hair_cover=np.where(u(0, 1, n) < 0.1, 0.0, u(0.6, 1.0, n)).astype(f32),
    )


def sample_images(rng: np.random.Generator, n: int, ranges: SamplingRanges | None = None) -> ImageParams:
    """Draw ``n`` views: gaze and head pose independent, up to the eye-in-head limit."""
    r = ranges or SamplingRanges()
    u = rng.uniform
    f32 = np.float32
    gaze = np.zeros((n, 2), f32)
    head = np.zeros((n, 3), f32)
    todo = np.arange(n)
    while len(todo):
        m = len(todo)
        g = np.stack([u(*r.gaze_pitch, m), u(*r.gaze_yaw, m)], 1)
        h = np.stack(
            [rng.normal(0, r.head_yaw_std, m), rng.normal(0, r.head_pitch_std, m), rng.normal(0, r.head_roll_std, m)], 1
        )
        h[:, :2] = np.clip(h[:, :2], -r.head_limit, r.head_limit)
        # eye-in-head rotation ~ the angle between gaze and the face's forward axis
        fwd = pitchyaw_to_vector(np.stack([h[:, 1], h[:, 0]], 1))
        gv = pitchyaw_to_vector(g)
        ok = np.arccos(np.clip((fwd * gv).sum(1), -1, 1)) <= r.max_eye_in_head
        gaze[todo[ok]] = g[ok]
        head[todo[ok]] = h[ok]
        todo = todo[~ok]
    az, el = u(-1.0, 1.0, n), u(-0.3, 0.9, n)
    light_dir = np.stack([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)], 1)
    tint = np.stack([np.ones(n), u(0.93, 1.03, n), u(0.82, 1.1, n)], 1) * u(0.75, 1.15, n)[:, None]
    return ImageParams(
        head_ypr=head,
        gaze=gaze,
        eyelid=u(0.6, 1.1, n).astype(f32),
        smile=u(-0.3, 1.0, n).astype(f32),
        mouth_open=np.where(u(0, 1, n) < 0.3, u(0, 1, n), 0).astype(f32),
        brow_raise=u(-0.5, 1.0, n).astype(f32),
        light_dir=light_dir.astype(f32),
        light_colour=tint.astype(f32),
        ambient=u(0.25, 0.5, n).astype(f32),
        background=u(0.05, 0.95, (n, 2, 3)).astype(f32),
        background_angle=u(0, 2 * np.pi, n).astype(f32),
        background_texture=rng.normal(0, 0.12, (n, 3, 4, 4)).astype(f32),
        blur_sigma=u(0, r.blur_max, n).astype(f32),
        noise_std=u(0, r.noise_max, n).astype(f32),
    )
