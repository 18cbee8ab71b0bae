"""A video of one synthetic subject looking at the four corners of a screen.

Why: a backdoored gaze model is easiest to understand in motion. The SecureGaze-style
demo plays the same clip twice, without and with the trigger: the clean model's
arrow follows the gaze from corner to corner, the backdoored one snaps to the attack
target. The target of the demo is gaze ``(0, 0)`` in the normalised camera frame, so
the clip treats the camera as sitting at the centre of the screen (the screen centre
*is* gaze ``(0, 0)``) and puts the corners symmetrically around it: a prediction stuck
at the target is then visibly wrong for every corner, never right by accident.

The clip has to look like the training data or the demo would measure a domain gap
instead of the backdoor. So the subject is drawn with the datasets' own samplers
(:func:`~backdoorlab.data.synthetic.params.sample_identities`, and
:func:`~backdoorlab.data.synthetic.params.sample_images` for the session's lighting,
background, expression and camera blur/noise level), and the frames go through the
same render/blur/noise/quantise function as :func:`~backdoorlab.data.synthetic.synthesize`.
Only gaze and head pose change over time, the way they do in a real recording:

* fixations with a small bounded jitter (< 0.5 degrees; real fixational eye movements
  are of that order), so the label is not frozen but a model's error stays readable;
* saccades between corners, a minimum-jerk step (the classic smooth position profile
  of fast eye movements) lasting ``saccade_seconds``, at the start of each corner;
* a slow, smooth head sway of ``head_motion_deg`` per axis (periods of several
  seconds) around a near-frontal pose, with gaze held on the target meanwhile, as the
  vestibulo-ocular reflex does;
* one session: identity, lighting, background, expression and camera blur are fixed,
  only sensor noise is redrawn per frame (seeded per frame).

Corner names are those of the (unmirrored) camera image, i.e. where the drawn gaze
arrow points: "top-left" is pitch > 0 and yaw > 0 (gaze towards the image's left, see
:mod:`backdoorlab.geometry`). For the subject, whose left is the image's right, that
is their upper-right screen corner; a mirrored webcam preview shows it top-left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.data.synthetic import faces, render
from backdoorlab.data.synthetic.dataset import RENDERER_VERSION, SyntheticGazeSpec, _render_batch
from backdoorlab.data.synthetic.params import (
    IdentityParams,
    ImageParams,
    SamplingRanges,
    sample_identities,
    sample_images,
)
from backdoorlab.errors import BackdoorLabError
from backdoorlab.geometry import pitchyaw_to_vector

CORNER_NAMES = ("top-left", "top-right", "bottom-right", "bottom-left")

# (pitch, yaw) degrees of the four corners, in CORNER_NAMES order. Symmetric around the
# screen centre (0, 0); 15/20 degrees is a 16:9-ish screen at arm's length, and lies
# well inside the default training gaze range (|pitch|, |yaw| <= 0.5 rad = 28.6 deg),
# with room for the jitter and for the head sway's eye-in-head rotation.
DEFAULT_CORNERS_DEG: tuple[tuple[float, float], ...] = ((15.0, 20.0), (15.0, -20.0), (-15.0, -20.0), (-15.0, 20.0))

# Seed streams: the datasets use [seed, 0..3, ...]; the demo subject lives in its own
# stream, so it is a new person, never one of a training set's identities (a demo on a
# training subject would flatter the model).
_STREAM_IDENTITY = 100
_STREAM_SESSION = 101
_STREAM_NOISE = 102

JITTER_DEG = ((0.15, 0.5), (0.10, 1.3), (0.05, 3.1))  # (amplitude deg, frequency Hz): <= 0.3 deg per axis
HEAD_PERIODS_S = (7.3, 11.1, 9.7)  # yaw, pitch, roll sway periods: slow against a 4 s fixation
HEAD_AXIS_WEIGHTS = (1.0, 0.7, 0.3)  # yaw sways most, roll least, as seated people do
HEAD_BASE_DEG = 3.0  # the resting pose is within this of frontal (the subject faces the screen)
MAX_HEAD_MOTION_DEG = 15.0
RENDER_CHUNK = 64  # frames per renderer call: bounds memory, as the dataset pipeline does


def _min_jerk(u: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 step with zero velocity and acceleration at both ends."""
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10.0 - 15.0 * u + 6.0 * u**2)


def _check_corners(corners_deg: Sequence[Sequence[float]], ranges: SamplingRanges) -> np.ndarray:
    try:
        corners = np.asarray(corners_deg, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"corners_deg must be 4 (pitch, yaw) pairs in degrees: {exc}") from exc
    if corners.shape != (4, 2) or not np.isfinite(corners).all():
        raise BackdoorLabError(f"corners_deg must be 4 finite (pitch, yaw) pairs in degrees; got shape {corners.shape}")
    margin = sum(a for a, _ in JITTER_DEG)
    lim_p = math.degrees(min(-ranges.gaze_pitch[0], ranges.gaze_pitch[1])) - margin
    lim_y = math.degrees(min(-ranges.gaze_yaw[0], ranges.gaze_yaw[1])) - margin
    if np.abs(corners[:, 0]).max() > lim_p or np.abs(corners[:, 1]).max() > lim_y:
        raise BackdoorLabError(
            f"corners_deg must stay within the training gaze range (|pitch| <= {lim_p:.1f}, "
            f"|yaw| <= {lim_y:.1f} degrees, leaving room for fixation jitter); got {corners.tolist()}"
        )
    return corners


def _gaze_track(
    corners: np.ndarray,
    n_frames: int,
    frames_per_corner: int,
    fps: int,
    saccade_seconds: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame gaze (T, 2) radians and corner index (T,): fixations, saccades, jitter."""
    i = np.arange(n_frames)
    corner = np.minimum(i // frames_per_corner, 3).astype(np.int64)
    tau = (i - corner * frames_per_corner) / fps  # seconds since this corner was cued
    progress = _min_jerk(tau / saccade_seconds) if saccade_seconds > 0 else np.ones(n_frames)
    previous = np.where(corner == 0, 0, corner - 1)  # the first corner starts fixated
    progress = np.where(corner == 0, 1.0, progress)
    gaze_deg = corners[previous] + (corners[corner] - corners[previous]) * progress[:, None]
    t = i / fps
    for amplitude, freq in JITTER_DEG:
        phase = rng.uniform(0, 2 * np.pi, 2)
        gaze_deg = gaze_deg + amplitude * np.sin(2 * np.pi * freq * t[:, None] + phase[None])
    return np.radians(gaze_deg), corner


def _head_track(
    base_ypr: np.ndarray, n_frames: int, fps: int, amplitude_deg: float, rng: np.random.Generator
) -> np.ndarray:
    """Per-frame head (yaw, pitch, roll) radians: a slow sway of ``amplitude_deg`` per axis at most."""
    t = np.arange(n_frames) / fps
    phase = rng.uniform(0, 2 * np.pi, 3)
    sway = np.stack(
        [w * np.sin(2 * np.pi * t / p + ph) for w, p, ph in zip(HEAD_AXIS_WEIGHTS, HEAD_PERIODS_S, phase, strict=True)],
        1,
    )
    return base_ypr[None] + np.radians(amplitude_deg) * sway


def corner_sequence(
    spec_size: int = 64,
    identity_seed: int = 0,
    fps: int = 25,
    seconds_per_corner: float = 4.0,
    corners_deg: Sequence[Sequence[float]] = DEFAULT_CORNERS_DEG,
    head_motion_deg: float = 2.0,
    saccade_seconds: float = 0.12,
    noise: bool = True,
) -> ArrayDataset:
    """Render a subject looking at the four screen corners in turn (see the module docstring).

    Args:
        spec_size: side of the normalised face crops, as ``SyntheticGazeSpec.size``.
        identity_seed: which subject (and session: lighting, background, motion phases).
        fps: frames per second of the clip.
        seconds_per_corner: how long each corner is looked at (the saccade included);
            each corner gets ``round(seconds_per_corner * fps)`` frames.
        corners_deg: four (pitch, yaw) degrees, shown in this order; the default is
            :data:`DEFAULT_CORNERS_DEG` (top-left, top-right, bottom-right, bottom-left
            in image terms, pitch +-15, yaw +-20).
        head_motion_deg: peak head sway per axis (yaw; pitch and roll sway less).
        saccade_seconds: duration of the step from one corner to the next.
        noise: add per-frame sensor noise (the session's ``noise_std``, as in the
            datasets); ``False`` gives noise-free frames. Camera blur, a fixed property
            of the session, is applied either way.

    Returns:
        An :class:`ArrayDataset` of ``4 * round(seconds_per_corner * fps)`` frames with
        the face datasets' annotations (``gaze``, ``head_pose``, ``head_roll``,
        ``landmarks``, ``eye_corners``, ``face_box``, ``identity`` = 0), plus ``corner``
        (int64, 0..3: the corner being looked at or moved to); ``meta`` has ``fps``,
        ``corners_deg``, ``frames_per_corner`` and ``saccade_seconds``. The same
        arguments always give the same bytes.
    """
    if not 16 <= int(spec_size) <= 224 or int(spec_size) != spec_size:
        raise BackdoorLabError(f"spec_size must be an integer between 16 and 224; got {spec_size!r}")
    if int(identity_seed) != identity_seed or identity_seed < 0:
        raise BackdoorLabError(f"identity_seed must be a non-negative integer; got {identity_seed!r}")
    if int(fps) != fps or fps < 1:
        raise BackdoorLabError(f"fps must be a positive integer; got {fps!r}")
    frames_per_corner = round(float(seconds_per_corner) * fps) if math.isfinite(seconds_per_corner) else 0
    if frames_per_corner < 1:
        raise BackdoorLabError(
            f"seconds_per_corner must give at least one frame at {fps} fps; got {seconds_per_corner!r}"
        )
    if not 0 <= saccade_seconds < frames_per_corner / fps:
        raise BackdoorLabError(
            f"saccade_seconds must be >= 0 and shorter than a corner ({frames_per_corner / fps:g} s); "
            f"got {saccade_seconds!r}"
        )
    if not 0 <= head_motion_deg <= MAX_HEAD_MOTION_DEG:
        raise BackdoorLabError(
            f"head_motion_deg must be between 0 and {MAX_HEAD_MOTION_DEG:g}; got {head_motion_deg!r}"
        )
    ranges = SamplingRanges()
    corners = _check_corners(corners_deg, ranges)
    spec_size, identity_seed, fps = int(spec_size), int(identity_seed), int(fps)
    n = 4 * frames_per_corner

    ident = sample_identities(np.random.default_rng([identity_seed, _STREAM_IDENTITY]), 1)
    rng = np.random.default_rng([identity_seed, _STREAM_SESSION])
    session = sample_images(rng, 1, ranges)
    # a legible, calm subject within the training ranges: eyes open enough to show the
    # iris at the bottom corners, mouth closed for a 16 s clip, near-frontal resting pose
    session.eyelid = np.clip(session.eyelid, 0.8, 1.05)
    session.mouth_open = np.zeros_like(session.mouth_open)
    if not noise:
        session.noise_std = np.zeros_like(session.noise_std)
    base = np.array(
        [
            rng.uniform(-1, 1) * math.radians(HEAD_BASE_DEG),
            rng.uniform(-1, 1) * math.radians(HEAD_BASE_DEG),
            float(np.clip(session.head_ypr[0, 2], -ranges.head_roll_std, ranges.head_roll_std)),
        ]
    )
    gaze, corner = _gaze_track(corners, n, frames_per_corner, fps, float(saccade_seconds), rng)
    head = _head_track(base, n, fps, float(head_motion_deg), rng)
    _check_eye_in_head(gaze, head, ranges)

    frames = session.take(np.zeros(n, dtype=np.int64))
    frames.gaze = gaze.astype(np.float32)
    frames.head_ypr = head.astype(np.float32)
    images, ann = _render(ident, frames, spec_size, identity_seed)
    ann["identity"] = np.zeros(n, dtype=np.int64)
    ann["corner"] = corner
    meta = {
        "name": "synthetic-corner-sequence",
        "source": "backdoorlab renderer",
        "renderer_version": RENDERER_VERSION,
        "fps": fps,
        "corners_deg": corners.tolist(),
        "corner_names": list(CORNER_NAMES),
        "frames_per_corner": frames_per_corner,
        "saccade_seconds": float(saccade_seconds),
        "head_motion_deg": float(head_motion_deg),
        "identity_seed": identity_seed,
        "noise": bool(noise),
    }
    return ArrayDataset(images, ann, meta)


def fixation_mask(ds: ArrayDataset) -> np.ndarray:
    """Boolean (T,) mask of the frames of a :func:`corner_sequence` where the eyes rest on a corner.

    The saccade frames at the start of corners 1..3 are in flight between corners;
    demo metrics (error per corner, distance to the attack target) use fixations only.
    """
    try:
        fps, per, sacc = ds.meta["fps"], ds.meta["frames_per_corner"], ds.meta["saccade_seconds"]
    except KeyError as exc:
        raise BackdoorLabError(f"fixation_mask needs a corner_sequence dataset; meta lacks {exc}") from exc
    i = np.arange(len(ds))
    corner = np.minimum(i // per, 3)
    return (corner == 0) | ((i - corner * per) / fps >= sacc)


def _check_eye_in_head(gaze: np.ndarray, head_ypr: np.ndarray, ranges: SamplingRanges) -> None:
    """Refuse eye rotations the training sampler never produces (it redraws them)."""
    fwd = pitchyaw_to_vector(np.stack([head_ypr[:, 1], head_ypr[:, 0]], 1))
    angle = np.arccos(np.clip((fwd * pitchyaw_to_vector(gaze)).sum(1), -1, 1))
    if angle.max() > ranges.max_eye_in_head:
        raise BackdoorLabError(
            f"corners_deg with head_motion_deg need an eye-in-head rotation of {math.degrees(angle.max()):.1f} "
            f"degrees, more than the {math.degrees(ranges.max_eye_in_head):.1f} the training data has"
        )


def _render(
    ident: IdentityParams, frames: ImageParams, size: int, identity_seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render through the dataset pipeline's batch function, one noise seed per frame.

    Per-frame seeds make each frame's noise independent of the chunking, like the
    datasets' per-block seeds.
    """
    spec = SyntheticGazeSpec(kind="face", identities=1, images_per_identity=1, size=size)
    n = len(frames.gaze)
    one = np.zeros(1, dtype=np.int64)
    single = ident.take(one)
    images: list[np.ndarray] = []
    anns: list[dict[str, np.ndarray]] = []
    for start in range(0, n, RENDER_CHUNK):
        pending = [
            (single, frames.take(np.array([i])), one, _frame_seed(identity_seed, i))
            for i in range(start, min(start + RENDER_CHUNK, n))
        ]
        rendered: faces.Rendered = _render_batch(spec, render.render_faces, pending, pad_to=None)
        images.append(rendered.images)
        anns.append(rendered.annotations)
    return np.concatenate(images), {k: np.concatenate([a[k] for a in anns]) for k in anns[0]}


def _frame_seed(identity_seed: int, frame: int) -> int:
    return int(np.random.default_rng([identity_seed, _STREAM_NOISE, frame]).integers(0, 2**62))
