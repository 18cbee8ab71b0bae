"""Self-contained HTML page for the backdoor-detection bench on a model zoo.

``bench/detect_zoo.py`` reduces each detector to a few numbers per attack group (AUROC,
TPR at a false-positive budget, accuracy). Those numbers hide *why* a method wins or
loses: whether clean and backdoored scores overlap everywhere or only for one trigger
type, whether the threshold calibrated on the reference models sits in a sensible
place, and whether a "detected" model was detected for the right reason (the reversed
trigger resembles the real one) or by luck. This page shows exactly those things:

1. ROC curves of every method (clean evaluation models vs backdoored models; the
   reference models only calibrate the threshold, so they are left out);
2. per method, every model's score as a dot, by role and attack type, with the threshold;
3. one table row per model with each method's score, verdict and estimated target;
4. for each backdoored model, its real trigger on a few clean test faces next to the
   images each method saved with the trigger it reversed;
5. the group metrics of the bench and the command that produced them.

Like the other reports it is one HTML file with every image inlined as a data URI (it
is archived with the results and opened offline). Everything that comes from the
results file or a run folder is escaped by the template. The real triggers are handed
in as images (:class:`TriggerExample`; ``backdoorlab.experiments.zoo_illustrations``
rebuilds them), so the page imports nothing from ``backdoorlab.experiments``. A run
folder that has been deleted, a verdict without images or a run whose trigger could not
be rebuilt is shown as a note rather than failing the page: the results JSON is the record, the folders are
only illustrations of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex

from backdoorlab import __version__
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics.detection import auroc, roc_curve
from backdoorlab.report.attack_report import _png_uri, amplified_residual
from backdoorlab.report.draw import image_grid
from backdoorlab.report.figures import _STYLE, fig_to_data_uri
from backdoorlab.report.gaze_report import load_report_template, write_html_atomically

TEMPLATE_NAME = "zoo_report.html"
FACES_PER_PANEL = 3  # clean test faces shown per backdoored model (and reversed images per method)
FACE_DISPLAY_PX = 96  # displayed size of one face; 64-pixel faces are scaled up by the browser
REFERENCE_COLOUR = "#9a9a9a"
CLEAN_COLOUR = "#4c72b0"
THRESHOLD_COLOUR = "#c44e52"
_ROW_LABELS = ("reference clean", "evaluation clean", "backdoored")
_PROTOCOL = (
    "Clean reference models calibrate each method's threshold (at most 10% of them flagged); every other model "
    "is evaluated. A model is flagged when score ≥ threshold. Metrics compare the clean evaluation models with "
    "the backdoored ones."
)


@dataclass(frozen=True)
class TriggerExample:
    """A backdoored model's real trigger on a few clean test faces, or the note saying why there is none.

    Handed in by the caller (who can rebuild a run's data and trigger), so this page
    imports nothing from ``backdoorlab.experiments``.
    """

    clean: np.ndarray | None = None  # uint8 (N, H, W, C): the first faces of the defender's clean set
    triggered: np.ndarray | None = None  # the same faces with the run's real trigger
    note: str = ""


# --------------------------------------------------------------------------- loading


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_results(results_json: Path) -> dict[str, Any]:
    """Read and check ``detect_zoo.json``; a :class:`BackdoorLabError` names what is wrong.

    Only the fields the page needs are checked, so a results file from a newer bench with
    extra fields still renders; a missing or mistyped needed field fails here with its
    path in the message instead of as a ``KeyError`` deep inside the plotting code.
    """
    path = Path(results_json)
    if not path.is_file():
        raise BackdoorLabError(f"{path} not found: run bench/detect_zoo.py first to write the detection results")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackdoorLabError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BackdoorLabError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise BackdoorLabError(f"{path}: 'methods' must be a non-empty object of method name -> results")
    for name, res in methods.items():
        where = f"{path}: methods[{name!r}]"
        if not isinstance(res, dict):
            raise BackdoorLabError(f"{where} must be an object")
        if not _is_number(res.get("threshold")):
            raise BackdoorLabError(f"{where}['threshold'] must be a number; got {res.get('threshold')!r}")
        if not isinstance(res.get("groups", {}), dict):
            raise BackdoorLabError(f"{where}['groups'] must be an object of group name -> metrics")
        models = res.get("models")
        if not isinstance(models, list):
            raise BackdoorLabError(f"{where}['models'] must be a list of models")
        for i, m in enumerate(models):
            if not isinstance(m, dict):
                raise BackdoorLabError(f"{where}['models'][{i}] must be an object")
            for key in ("run_dir", "attack"):
                if not isinstance(m.get(key), str):
                    raise BackdoorLabError(f"{where}['models'][{i}][{key!r}] must be a string; got {m.get(key)!r}")
            if not _is_number(m.get("score")):
                raise BackdoorLabError(f"{where}['models'][{i}]['score'] must be a number; got {m.get('score')!r}")
            if not isinstance(m.get("reference", False), bool):
                raise BackdoorLabError(f"{where}['models'][{i}]['reference'] must be true or false")
    return data


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 2) -> str:
    if not _is_number(value) or not math.isfinite(float(value)):
        return "–" if value is None else str(value)
    return f"{float(value):.{digits}f}"


def _fmt_target(value: Any) -> str:
    """(pitch, yaw) degrees as text; anything else (no fixed target) as a dash."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        return f"{float(value[0]):+.1f}°, {float(value[1]):+.1f}°"
    return "–"


def _attack_group(model: Mapping[str, Any]) -> str:
    """Colour key of a backdoored model: the bench's group when the record has it, else rebuilt.

    Records from before the bench stored its ``group`` are grouped as far as the record
    allows: it does not store the relabel rule, but a backdoored model without a
    ``target_deg`` is one whose target moves with the input (a shift relabel), which
    detectors see very differently.
    """
    if model.get("group"):
        return str(model["group"])
    if model.get("adaptive"):
        return f"{model['attack']} (adaptive)"
    if model["attack"] != "clean" and model.get("target_deg") is None:
        return f"{model['attack']} (no fixed target)"
    return str(model["attack"])


def _role(model: Mapping[str, Any]) -> int:
    """0 reference clean, 1 evaluation clean, 2 backdoored (the rows of the strip plot)."""
    if model["attack"] == "clean":
        return 0 if model.get("reference") else 1
    return 2


def _attack_colours(groups: Sequence[str]) -> dict[str, str]:
    """A fixed colour per attack group, from tab10 minus its blue and grey (used for clean models)."""
    palette = [to_hex(f"C{i}") for i in range(10) if i not in (0, 7)]
    return {g: palette[i % len(palette)] for i, g in enumerate(sorted(set(groups)))}


# --------------------------------------------------------------------------- figures


def _roc_figure(methods: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """One ROC plot with a curve per method, and notes for methods that cannot have one.

    The calibrated threshold's operating point is marked on each curve: the bench
    reports accuracy at that point, while AUROC summarises all thresholds, and the two
    disagree exactly when the threshold is badly placed.
    """
    notes: list[str] = []
    curves = []
    for name, res in methods.items():
        ev = [m for m in res["models"] if _role(m) > 0 and math.isfinite(float(m["score"]))]
        labels = np.array([_role(m) == 2 for m in ev], dtype=int)
        scores = np.array([float(m["score"]) for m in ev])
        if labels.sum() == 0 or labels.sum() == len(labels):
            notes.append(f"{name}: no ROC curve (needs both clean evaluation and backdoored models).")
            continue
        fpr, tpr, _ = roc_curve(scores, labels)
        flagged = scores >= float(res["threshold"])
        point = (float(flagged[labels == 0].mean()), float(flagged[labels == 1].mean()))
        curves.append((name, fpr, tpr, auroc(scores, labels), point, int((labels == 0).sum()), int(labels.sum())))
    if not curves:
        return None, notes
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        ax.plot([0, 1], [0, 1], color="#9a9a9a", linewidth=1, linestyle=":", label="chance")
        for i, (name, fpr, tpr, area, point, n0, n1) in enumerate(curves):
            colour = f"C{i}"
            ax.plot(fpr, tpr, color=colour, linewidth=1.8, label=f"{name}: AUROC {area:.2f} ({n0} clean / {n1} bd)")
            ax.plot(*point, marker="o", color=colour, markersize=6, markeredgecolor="white", linestyle="none")
        ax.axvline(0.1, color=THRESHOLD_COLOUR, linewidth=0.8, linestyle="--", alpha=0.6, label="FPR = 0.1")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false-positive rate (clean evaluation models flagged)")
        ax.set_ylabel("true-positive rate (backdoored models flagged)")
        ax.set_title("ROC of the detection score (dot = calibrated threshold)")
        ax.legend(frameon=False, loc="lower right", fontsize=8)
        fig.tight_layout()
    return fig_to_data_uri(fig), notes


def _det_figure(methods: Mapping[str, Any]) -> str | None:
    """DET curves (miss rate against false-alarm rate, both on normal-deviate axes), one per method.

    Why beside the ROC: the low false-alarm corner, where a deployed detector has to
    work, is a sliver of a linear ROC plot and spreads over most of a DET plot. Rates of
    exactly 0 or 1 (small zoos) are drawn at half a model's share from the edge.
    """
    from scipy.stats import norm

    curves = []
    for name, res in methods.items():
        ev = [m for m in res["models"] if _role(m) > 0 and math.isfinite(float(m["score"]))]
        labels = np.array([_role(m) == 2 for m in ev], dtype=int)
        if labels.sum() == 0 or labels.sum() == len(labels):
            continue
        fpr, tpr, _ = roc_curve(np.array([float(m["score"]) for m in ev]), labels)
        edge = 0.5 / max(int(labels.sum()), int((labels == 0).sum()))
        curves.append((name, np.clip(fpr, edge, 1 - edge), np.clip(1 - tpr, edge, 1 - edge)))
    if not curves:
        return None
    ticks = np.array([0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95])
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 4.4))
        for i, (name, fpr, fnr) in enumerate(curves):
            ax.plot(norm.ppf(fpr), norm.ppf(fnr), color=f"C{i}", linewidth=1.8, drawstyle="steps-post", label=name)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
        lim = norm.ppf([0.005, 0.97])
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.set_xlabel("false-alarm rate (clean evaluation models flagged)")
        ax.set_ylabel("miss rate (backdoored models not flagged)")
        ax.set_title("DET of the detection score")
        ax.legend(frameon=False, loc="upper right", fontsize=8)
        fig.tight_layout()
    return fig_to_data_uri(fig)


def _distribution_figure(name: str, res: Mapping[str, Any], colours: Mapping[str, str]) -> str:
    """Strip plot of scores: one row per role, backdoored dots coloured by attack group.

    A dot plot rather than a histogram because zoos are small (tens of models): every
    model stays visible, and an outlier can be matched to its row in the model table.
    """
    models = [m for m in res["models"] if math.isfinite(float(m["score"]))]
    rng = np.random.default_rng(0)  # fixed jitter: the page is identical on every rebuild
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.6, 2.7))
        counts = [0, 0, 0]
        seen: set[str] = set()
        for m in models:
            row = _role(m)
            counts[row] += 1
            if row == 2:
                group = _attack_group(m)
                colour, label = colours[group], group
            else:
                colour, label = (REFERENCE_COLOUR, _ROW_LABELS[0]) if row == 0 else (CLEAN_COLOUR, _ROW_LABELS[1])
            y = 2 - row + rng.uniform(-0.18, 0.18)
            ax.scatter(
                float(m["score"]),
                y,
                s=34,
                color=colour,
                edgecolors="white",
                linewidths=0.6,
                zorder=3,
                label=None if label in seen else label,
            )
            seen.add(label)
        ax.axvline(
            float(res["threshold"]),
            color=THRESHOLD_COLOUR,
            linestyle="--",
            linewidth=1.4,
            label=f"threshold {float(res['threshold']):.3g}",
        )
        ax.set_yticks([2, 1, 0], [f"{lab} ({n})" for lab, n in zip(_ROW_LABELS, counts, strict=True)])
        ax.set_ylim(-0.6, 2.6)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("detection score (higher = more likely backdoored)")
        ax.set_title(f"{name}: score per model")
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        fig.tight_layout()
    return fig_to_data_uri(fig)


# --------------------------------------------------------------------------- tables


def _model_rows(methods: Mapping[str, Any], root: Path) -> list[dict[str, Any]]:
    """One row per model (keyed by run folder) with one cell per method.

    Keyed by folder rather than by position because a method may have inspected only
    part of the zoo; its cells are then empty for the other models.
    """
    first: dict[str, dict[str, Any]] = {}
    per_method: dict[str, dict[str, dict[str, Any]]] = {}
    for name, res in methods.items():
        per_method[name] = {}
        for m in res["models"]:
            first.setdefault(m["run_dir"], m)
            per_method[name][m["run_dir"]] = m
    ordered = sorted(first.values(), key=lambda m: (_role(m), _attack_group(m), _seed_key(m), m["run_dir"]))
    rows = []
    for m in ordered:
        cells = []
        for name, res in methods.items():
            mm = per_method[name].get(m["run_dir"])
            if mm is None:
                cells.append(None)
                continue
            cells.append(
                {
                    "score": _fmt(mm["score"], 3),
                    "flagged": float(mm["score"]) >= float(res["threshold"]),
                    "estimated": _fmt_target(mm.get("estimated_target_deg")),
                    "seconds": _fmt(mm.get("seconds"), 0),
                }
            )
        rows.append(
            {
                "run_dir": m["run_dir"],
                "run_name": Path(m["run_dir"]).name,
                "missing": not (root / m["run_dir"]).is_dir(),
                "seed": m.get("seed", "–"),
                "attack": _attack_group(m),
                "role": ("reference", "evaluation", "evaluation")[_role(m)],
                "reference": _role(m) == 0,
                "asr": _fmt(m.get("attack_success_rate")),
                "target": _fmt_target(m.get("target_deg")),
                "cells": cells,
            }
        )
    return rows


def _seed_key(m: Mapping[str, Any]) -> float:
    return float(m["seed"]) if _is_number(m.get("seed")) else math.inf


def _group_rows(methods: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name, res in methods.items():
        for group, g in res.get("groups", {}).items():
            g = g if isinstance(g, dict) else {}
            rows.append(
                {
                    "method": name,
                    "group": str(group),
                    "counts": f"{g.get('n_clean', '–')} / {g.get('n_backdoored', '–')}",
                    "auroc": _fmt(g.get("auroc")),
                    "tpr": _fmt(g.get("tpr_at_fpr_0.1")),
                    "accuracy": _fmt(g.get("accuracy")),
                    "target_error": (
                        "–" if g.get("target_error_deg_mean") is None else f"{_fmt(g['target_error_deg_mean'], 1)}°"
                    ),
                }
            )
    return rows


def _method_rows(methods: Mapping[str, Any], colours: Mapping[str, str]) -> list[dict[str, Any]]:
    rows = []
    for name, res in methods.items():
        roles = [_role(m) for m in res["models"]]
        ratio = res.get("seconds_over_train_mean")
        rows.append(
            {
                "name": name,
                "threshold": _fmt(res["threshold"], 3),
                "n_models": len(roles),
                "n_reference": roles.count(0),
                "n_clean": roles.count(1),
                "n_backdoored": roles.count(2),
                "seconds_mean": _fmt(res.get("seconds_mean"), 0),
                "seconds_ratio": "–" if ratio is None else f"{_fmt(ratio)}×",
                "params": json.dumps(res.get("params", {}), sort_keys=True),
                "distribution": _distribution_figure(name, res, colours),
            }
        )
    return rows


# --------------------------------------------------------------------------- trigger panels


def _note(label: str, note: str) -> dict[str, Any]:
    return {"label": label, "uri": None, "note": note}


def _image_panel(label: str, images: np.ndarray, ncols: int, caption: str = "") -> dict[str, Any]:
    grid = image_grid(images, ncols=ncols, pad=2)
    width = round(grid.shape[1] * FACE_DISPLAY_PX / max(images.shape[2], 1))
    return {"label": label, "uri": _png_uri(grid), "width": width, "caption": caption}


def _rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _real_trigger_panel(example: TriggerExample | None) -> dict[str, Any]:
    """Clean faces, the same faces with the run's real trigger, and the amplified residual.

    The residual row is there because blend and warping triggers barely show on the face
    itself. The images are handed in (the caller rebuilds the run's trigger); a run the
    caller could not rebuild comes with the note saying why.
    """
    label = "real trigger"
    if example is None:
        return _note(label, "the real trigger was not given to the report.")
    if example.clean is None or example.triggered is None:
        return _note(label, example.note or "the real trigger could not be rebuilt.")
    residual, gain = amplified_residual(example.clean, example.triggered)
    rows = np.concatenate([_rgb(example.clean), _rgb(example.triggered), np.repeat(residual[..., None], 3, axis=-1)])
    caption = f"rows: clean test faces, with the trigger, residual ×{gain:.3g}"
    return _image_panel(label, rows, ncols=len(example.clean), caption=caption)


def _read_png(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _reversed_panel(run: Path, method: str) -> dict[str, Any]:
    """Up to :data:`FACES_PER_PANEL` of the images a method saved with its reversed trigger."""
    label = f"{method}: reversed trigger"
    folder = run / "defence" / method
    verdict_path = folder / "verdict.json"
    if not verdict_path.is_file():
        return _note(label, f"no verdict in {folder.name}/ (the method did not inspect this run folder).")
    try:
        verdict = json.loads(verdict_path.read_text(encoding="utf-8"))
        names = list((verdict.get("details") or {}).get("examples") or [])
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        return _note(label, f"unreadable verdict.json ({exc}).")
    if not names:
        return _note(label, "the method saved no reversed-trigger images.")
    images, missing = [], []
    for name in names[:FACES_PER_PANEL]:
        img = _read_png(folder / Path(str(name)).name)  # .name: a verdict cannot point outside its folder
        if img is None:
            missing.append(str(name))
        else:
            images.append(img)
    if not images:
        return _note(label, f"reversed-trigger images missing: {', '.join(missing)}.")
    if len({im.shape for im in images}) > 1:
        return _note(label, "reversed-trigger images differ in size.")
    caption = f"{len(images)} of {len(names)} saved" + (f"; missing: {', '.join(missing)}" if missing else "")
    return _image_panel(label, np.stack(images), ncols=len(images), caption=caption)


def _trigger_cards(
    methods: Mapping[str, Any], root: Path, real_triggers: Mapping[str, TriggerExample] | None
) -> list[dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    inspected: dict[str, set[str]] = {}  # method -> run folders it has a result for
    for name, res in methods.items():
        inspected[name] = {m["run_dir"] for m in res["models"]}
        for m in res["models"]:
            if _role(m) == 2:
                models.setdefault(m["run_dir"], m)
    cards = []
    for m in sorted(models.values(), key=lambda m: (_attack_group(m), _seed_key(m), m["run_dir"])):
        run = root / m["run_dir"]
        if not run.is_dir():
            panels = [_note("run folder", f"the run folder {m['run_dir']} no longer exists: no images to show.")]
        else:
            panels = [_real_trigger_panel(None if real_triggers is None else real_triggers.get(m["run_dir"]))]
            panels += [_reversed_panel(run, name) for name in methods if m["run_dir"] in inspected[name]]
        cards.append(
            {
                "attack": _attack_group(m),
                "seed": m.get("seed", "–"),
                "target": _fmt_target(m.get("target_deg")),
                "run_dir": m["run_dir"],
                "panels": panels,
            }
        )
    return cards


# --------------------------------------------------------------------------- page


def render_zoo_report(
    results: Mapping[str, Any],
    root: Path = Path("."),
    results_path: str = "",
    real_triggers: Mapping[str, TriggerExample] | None = None,
) -> str:
    """The page as an HTML string, from already loaded results (see :func:`write_zoo_report`)."""
    methods = results["methods"]
    n_clean = results.get("n_clean")
    n_clean = int(n_clean) if _is_number(n_clean) else 256
    groups = [_attack_group(m) for res in methods.values() for m in res["models"] if _role(m) == 2]
    colours = _attack_colours(groups)
    roc_figure, roc_notes = _roc_figure(methods)
    roc_note = (
        "Clean evaluation models against all backdoored models (reference models excluded). The dot on each curve "
        "is the calibrated threshold."
    )
    if roc_notes:
        roc_note += " " + " ".join(roc_notes)
    prov = results.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    models = [m for res in methods.values() for m in res["models"]]
    context = {
        "title": str(results.get("title") or "Backdoor detection on the model zoo"),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "protocol": str(results.get("protocol") or f"{_PROTOCOL} Defender clean set: {n_clean} test images per model."),
        "methods": _method_rows(methods, colours),
        "roc_figure": roc_figure,
        "det_figure": _det_figure(methods),
        "roc_note": roc_note,
        "group_rows": _group_rows(methods),
        "model_rows": _model_rows(methods, root),
        # a target (gaze) and reversed triggers only where the methods produce them: a weight inspection has neither
        "targets": any(m.get("target_deg") is not None or m.get("estimated_target_deg") is not None for m in models),
        "trigger_cards": _trigger_cards(methods, root, real_triggers) if results.get("trigger_images", True) else None,
        "command": str(prov.get("command", "")),
        "provenance": [(str(k), str(v)) for k, v in sorted(prov.items()) if k != "command"],
        "results_path": results_path,
    }
    return load_report_template(TEMPLATE_NAME).render(**context)


def write_zoo_report(
    results_json: Path,
    out_html: Path,
    root: Path = Path("."),
    real_triggers: Mapping[str, TriggerExample] | None = None,
) -> Path:
    """Write the detection page for ``results_json`` (``bench/detect_zoo.py`` output) to ``out_html``.

    Args:
        results_json: the bench's JSON results.
        out_html: output file; parent folders are created.
        root: folder the models' ``run_dir`` paths are relative to (the repository root
            when the bench ran from it).
        real_triggers: per backdoored model's ``run_dir``, its real trigger on a few clean
            faces (rebuilt by the caller; the page imports nothing that could rebuild it).

    Returns:
        ``out_html``.

    Raises:
        BackdoorLabError: the results file is missing, not JSON, or lacks a needed field.

    Written to a temporary sibling and moved into place, so a browser refreshing the
    page during a rebuild never sees half a file.
    """
    results = load_results(Path(results_json))
    html = render_zoo_report(results, Path(root), results_path=str(results_json), real_triggers=real_triggers)
    return write_html_atomically(out_html, html)


__all__ = ["TriggerExample", "load_results", "render_zoo_report", "write_zoo_report"]
