"""Animated GIFs of gaze sequences with arrows and captions (the SecureGaze-style demo).

Why GIF: it plays inline in a README, an HTML report and most chat tools without a
video codec. Its cost is a 256-colour palette and a weak (LZW) compressor, so the
writer is built to keep files small while keeping the arrows exact:

* one palette shared by all frames, quantised once from a sample of frames, with the
  arrow, halo and caption colours reserved in it (a per-frame palette would flicker
  and an adaptive one may drop a thin arrow's colour);
* no dithering: dither patterns change from frame to frame and defeat compression;
* faces are enlarged by nearest-neighbour (as in :func:`draw_gaze_arrows`), so every
  source pixel becomes a ``scale`` x ``scale`` block, which LZW codes cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from backdoorlab.errors import BackdoorLabError
from backdoorlab.report.draw import RGB, draw_gaze_arrows

CAPTION_BAND: RGB = (24, 24, 24)
CAPTION_TEXT: RGB = (235, 235, 235)
HALO: RGB = (255, 255, 255)  # draw_gaze_arrows' default outline
PALETTE_SAMPLE_FRAMES = 24
DRAW_CHUNK = 128  # frames drawn at a time: bounds memory for long clips


def side_by_side(a: np.ndarray, b: np.ndarray, gap: int = 4, gap_value: int = 255) -> np.ndarray:
    """Two (T, H, W, C) uint8 sequences next to each other, ``gap`` pixels apart.

    For "without trigger | with trigger" comparisons; heights and lengths must match.
    """
    for name, arr in (("a", a), ("b", b)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4:
            raise BackdoorLabError(
                f"side_by_side: {name} must be a uint8 (T, H, W, C) array; got "
                f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
            )
    if a.shape[0] != b.shape[0] or a.shape[1] != b.shape[1] or a.shape[3] != b.shape[3]:
        raise BackdoorLabError(
            f"side_by_side: a {tuple(a.shape)} and b {tuple(b.shape)} must agree in frames, height and channels"
        )
    if gap < 0:
        raise BackdoorLabError(f"side_by_side: gap must be >= 0; got {gap}")
    spacer = np.full((a.shape[0], a.shape[1], gap, a.shape[3]), gap_value, dtype=np.uint8)
    return np.concatenate([a, spacer, b], axis=2)


def _caption_layout(width: int, captions: Sequence[str], scale: int) -> tuple[float, int, int]:
    """Font scale, thickness and band height so that the longest caption fits the width."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = 1 if scale < 4 else 2
    font_scale = max(0.4, 0.17 * scale)  # ~ 0.5 at scale 3: readable at 192 px
    longest = max(captions, key=len) if captions else ""
    (tw, _), _ = cv2.getTextSize(longest, font, font_scale, thickness)
    margin = 6
    if tw > width - 2 * margin and tw > 0:
        font_scale *= (width - 2 * margin) / tw
    (_, th), base = cv2.getTextSize("Ag", font, font_scale, thickness)
    return font_scale, thickness, th + base + 2 * margin


def _add_captions(frames: np.ndarray, captions: Sequence[str], layout: tuple[float, int, int]) -> np.ndarray:
    font_scale, thickness, band = layout
    t, h, w, _ = frames.shape
    out = np.empty((t, h + band, w, 3), dtype=np.uint8)
    out[:, :h] = frames
    out[:, h:] = CAPTION_BAND
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    y = h + (band + th - base) // 2
    for i, text in enumerate(captions):
        cv2.putText(out[i], text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, CAPTION_TEXT, thickness, cv2.LINE_AA)
    return out


def _shared_palette(sample: np.ndarray, reserved: Sequence[RGB], max_colours: int) -> list[int]:
    """Flat RGB palette: colours fitted to ``sample`` plus the ``reserved`` ones, all distinct.

    At most ``max_colours - 1`` entries: the writer appends one more, the transparent
    index of its delta frames. Distinct entries matter because Pillow maps frames onto
    a given palette by colour, and a duplicate would make that mapping ambiguous.
    """
    keep = list(dict.fromkeys(tuple(int(c) for c in col) for col in reserved))
    n_fit = max(2, max_colours - 1 - len(keep))
    tall = Image.fromarray(np.ascontiguousarray(sample.reshape(-1, sample.shape[2], 3)))
    fitted = tall.quantize(colors=n_fit, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    flat = (fitted.getpalette() or [])[: 3 * n_fit]
    colours = [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]
    unique = list(dict.fromkeys([*colours, *keep]))
    return [c for col in unique for c in col]


def _unused_colour(palette: list[int]) -> tuple[int, int, int]:
    """A colour absent from ``palette``, for the transparent entry (never drawn)."""
    used = {tuple(palette[i : i + 3]) for i in range(0, len(palette), 3)}
    for g in range(256):
        if (255, g, 255) not in used:
            return (255, g, 255)
    raise BackdoorLabError("no free colour for the GIF's transparent entry")  # pragma: no cover


def _validate(
    frames: np.ndarray,
    arrows: Sequence[tuple[np.ndarray, RGB]],
    origins: np.ndarray | None,
    captions: Sequence[str] | None,
    scale: int,
    fps: int,
    max_colours: int,
) -> list[tuple[np.ndarray, RGB]]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise BackdoorLabError(
            f"write_gaze_gif: frames must be a uint8 numpy array; got {getattr(frames, 'dtype', type(frames).__name__)}"
        )
    if frames.ndim != 4 or frames.shape[3] not in (1, 3) or len(frames) == 0:
        raise BackdoorLabError(f"write_gaze_gif: frames must have shape (T>0, H, W, 1|3); got {tuple(frames.shape)}")
    t = len(frames)
    checked: list[tuple[np.ndarray, RGB]] = []
    for k, item in enumerate(arrows):
        try:
            gaze, colour = item
        except (TypeError, ValueError) as exc:
            raise BackdoorLabError(f"write_gaze_gif: arrows[{k}] must be a (pitchyaw, colour) pair") from exc
        gaze_arr = np.asarray(gaze)
        if gaze_arr.shape != (t, 2) or not np.issubdtype(gaze_arr.dtype, np.floating):
            raise BackdoorLabError(
                f"write_gaze_gif: arrows[{k}] gaze must be a float ({t}, 2) array (one per frame); "
                f"got {gaze_arr.dtype} {gaze_arr.shape}"
            )
        if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
            raise BackdoorLabError(f"write_gaze_gif: arrows[{k}] colour must be an (r, g, b) in 0..255; got {colour!r}")
        checked.append((gaze_arr, (int(colour[0]), int(colour[1]), int(colour[2]))))
    if origins is not None and np.asarray(origins).shape != (t, 2):
        raise BackdoorLabError(
            f"write_gaze_gif: origins must have shape ({t}, 2) (one per frame); got {np.asarray(origins).shape}"
        )
    if captions is not None and (isinstance(captions, str) or len(captions) != t):
        got = "a single string" if isinstance(captions, str) else f"{len(captions)}"
        raise BackdoorLabError(f"write_gaze_gif: captions must be one string per frame ({t}); got {got}")
    if int(scale) != scale or scale < 1:
        raise BackdoorLabError(f"write_gaze_gif: scale must be a positive integer; got {scale!r}")
    if not 0 < fps <= 100:
        raise BackdoorLabError(f"write_gaze_gif: fps must be in (0, 100] (GIF timing is in 10 ms steps); got {fps!r}")
    if not 8 <= max_colours <= 256:
        raise BackdoorLabError(f"write_gaze_gif: max_colours must be between 8 and 256; got {max_colours!r}")
    return checked


def write_gaze_gif(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    arrows: Sequence[tuple[np.ndarray, RGB]],
    origins: np.ndarray | None = None,
    scale: int = 3,
    fps: int = 25,
    captions: Sequence[str] | None = None,
    length_fraction: float = 0.7,
    max_colours: int = 128,
    tolerance: int = 8,
) -> Path:
    """Write a looping GIF of ``frames`` with gaze arrows and optional per-frame captions.

    Args:
        path: output file; its folder is created. Written to a temporary sibling and
            renamed into place, so a reader never sees a half-written GIF.
        frames: uint8 (T, H, W, 3) RGB (or (T, H, W, 1) grey) frames.
        arrows: ``(pitchyaw (T, 2) radians, (r, g, b))`` pairs, drawn in order (the last
            on top); e.g. ``[(truth, TRUE_COLOUR), (prediction, PRED_COLOUR)]``.
        origins: (T, 2) arrow start in frame pixels (x, y), e.g. the eye midpoint
            (:func:`backdoorlab.report.gallery.gaze_arrow_origins`); ``None`` = centre.
        scale: nearest-neighbour enlargement before drawing.
        fps: playback rate; each frame lasts ``1000 / fps`` ms (GIF rounds to 10 ms).
        captions: one string per frame, written on a dark band under the image.
        length_fraction: arrow length as a fraction of the image side for a gaze in
            the image plane (longer than in galleries: the demo's gazes are small).
        max_colours: size of the shared palette, the transparent entry included
            (fewer colours, smaller file).
        tolerance: how many levels (0..255, per channel) worse than its best palette
            colour a pixel may be shown so that it can be left unchanged from the
            previous frame; 0 for frames exactly as quantised (larger files with noisy
            frames). The default is about the sensor noise of the synthetic data.

    Identical consecutive frames are merged into one longer frame by Pillow (the
    playback timing is unchanged, the frame count in the file is lower).

    Returns:
        The path written.
    """
    checked = _validate(frames, arrows, origins, captions, scale, fps, max_colours)
    if not 0 <= tolerance <= 64:
        raise BackdoorLabError(f"write_gaze_gif: tolerance must be between 0 and 64; got {tolerance!r}")
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t, _, w, _ = frames.shape
    scale = int(scale)
    layout = _caption_layout(w * scale, captions, scale) if captions is not None else None
    origins_arr = None if origins is None else np.asarray(origins, dtype=np.float64)

    def drawn(lo: int, hi: int) -> np.ndarray:
        chunk = draw_gaze_arrows(
            frames[lo:hi],
            [(g[lo:hi], c) for g, c in checked],
            origins=None if origins_arr is None else origins_arr[lo:hi],
            scale=scale,
            length_fraction=length_fraction,
        )
        if captions is None or layout is None:
            return chunk
        return _add_captions(chunk, captions[lo:hi], layout)

    sample_idx = np.unique(np.linspace(0, t - 1, min(t, PALETTE_SAMPLE_FRAMES)).round().astype(int))
    sample = np.concatenate([drawn(int(i), int(i) + 1) for i in sample_idx])
    reserved = [c for _, c in checked] + [HALO] + ([CAPTION_BAND, CAPTION_TEXT] if captions is not None else [])
    palette = _shared_palette(sample, reserved, max_colours)
    holder = Image.new("P", (1, 1))
    holder.putpalette(palette)
    clear = len(palette) // 3  # the transparent index, one past the drawn colours
    gif_palette = bytes(palette + list(_unused_colour(palette)))

    # Delta frames: a pixel that would look (almost) the same as what the viewer already
    # sees becomes transparent (with disposal 1 the previous frame shows through). Long
    # runs of one index are what LZW compresses well, so static background and face
    # cost almost nothing. "Almost": per-frame sensor noise flips most pixels between
    # neighbouring palette colours, so a pixel is also kept when the shown colour is at
    # most ``tolerance`` levels (per channel) worse than the best palette colour for it;
    # measured against the shown colour, not the previous frame, so errors cannot
    # accumulate. Done here rather than with Pillow's ``optimize`` so the file does not
    # depend on the Pillow version.
    colours = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
    images: list[Image.Image] = []
    shown: np.ndarray | None = None  # palette index each pixel currently displays
    for lo in range(0, t, DRAW_CHUNK):
        for frame in drawn(lo, min(lo + DRAW_CHUNK, t)):
            index = np.asarray(Image.fromarray(frame).quantize(palette=holder, dither=Image.Dither.NONE))
            if shown is None:
                coded, shown = index, index.copy()
            else:
                truth = frame.astype(np.int16)
                err_new = np.abs(colours[index] - truth).max(-1)
                err_shown = np.abs(colours[shown] - truth).max(-1)
                keep = err_shown <= err_new + tolerance
                coded = np.where(keep, np.uint8(clear), index)
                shown = np.where(keep, shown, index)
            img = Image.frombytes(
                "P", (coded.shape[1], coded.shape[0]), np.ascontiguousarray(coded, np.uint8).tobytes()
            )
            img.putpalette(gif_palette)
            images.append(img)

    # a per-process sibling: same filesystem (so the rename is atomic), and two writers
    # of the same file cannot interleave their bytes
    tmp_name = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    try:
        images[0].save(
            tmp_name,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=1000.0 / fps,
            loop=0,
            optimize=False,
            disposal=1,
            transparency=clear,
            palette=gif_palette,
        )
        os.replace(tmp_name, out_path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
    return out_path
