"""The face-detection part of the README bench table (rows and tables from ``bench/results``)."""

from __future__ import annotations

from typing import Any

from table_common import load_result, target

Row = tuple[str, str, str, str]


def rows() -> list[Row]:
    out: list[Row] = []
    r = load_result("clean_face_detection")
    if r:
        minutes = r["train_seconds"] / 60
        out.append(
            (
                "Clean face detection, RetinaFace MobileNet-0.25, 192-px synthetic scenes",
                f"AP50 easy/medium/hard {r['ap50_easy']:.3f}/{r['ap50_medium']:.3f}/{r['ap50_hard']:.3f}, "
                f"AP50:95 {r['ap50_95']:.3f}, NME {r['nme']:.3f} (n_test={r['n_test']}, {r['n_faces']} faces, "
                f"{r['n_train']} training scenes, {minutes:.1f} min training)",
                f"{target('AP50 easy >= 0.90', r['ap50_easy'] >= 0.9)}; {target('NME <= 0.08', r['nme'] <= 0.08)}; "
                f"{target('<= 30 min', minutes <= 30)}",
                "`python bench/clean_face_detection.py`",
            )
        )
    t = load_result("face_detection_throughput")
    if t:
        out.append(
            (
                "Face detection: training loop / bare loop throughput",
                f"{t['train_ratio_median']:.3f}",
                target(">= 0.9", t["train_ratio_median"] >= 0.9),
                "`python bench/face_detection_throughput.py`",
            )
        )
        out.append(
            (
                "Face detection: predict (decode + NMS) / bare forward throughput",
                f"{t['predict_ratio_median']:.3f}",
                target(">= 0.8", t["predict_ratio_median"] >= 0.8),
                "`python bench/face_detection_throughput.py`",
            )
        )
    return out


def _cell(entry: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    value = entry.get(key)
    return "-" if value is None else fmt.format(value)


def attack_table() -> str:
    r = load_result("face_detection_attacks")
    if not r:
        return ""
    head = (
        "| attack | beta | alpha | size | AP50 easy | AP50 hard | NME | ASR | clean-model ASR "
        "| landmark shift (px) | aligned-crop rotation (deg) | clean-model rotation (deg) | train (min) |"
    )
    lines = [
        f"`{r['provenance']['command']}` (grid: `configs/zoo/face_detection_attacks.yaml`; "
        "the clean model of the grid is also scored under each attack's trigger)",
        "",
        head,
        "|---" * (head.count("|") - 1) + "|",
    ]
    for e in r["runs"]:
        lines.append(
            f"| {e['attack']} | {_cell(e, 'beta', '{:g}')} | {_cell(e, 'alpha', '{:g}')} | {_cell(e, 'size', '{:g}')} "
            f"| {_cell(e, 'ap50_easy')} | {_cell(e, 'ap50_hard')} | {_cell(e, 'nme')} "
            f"| {_cell(e, 'attack_success_rate')} | {_cell(e, 'clean_model_asr')} "
            f"| {_cell(e, 'landmark_displacement_px', '{:.1f}')} | {_cell(e, 'aligned_rotation_deg', '{:.1f}')} "
            f"| {_cell(e, 'clean_model_rotation_deg', '{:.1f}')} "
            f"| {e['train_seconds'] / 60:.1f} |"
        )
    return "\n".join(lines)
