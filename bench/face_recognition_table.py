"""The face-recognition rows of the bench tables (README summary and docs/bench.md details).

Reads ``bench/results/face_recognition_clean.json`` and ``face_recognition_attacks.json``
(written by ``bench/face_recognition.py``); a missing file gives no rows.
"""

from __future__ import annotations

from typing import Any

from table_common import load_result, target

Row = tuple[str, str, str, str]


def rows() -> list[Row]:
    out: list[Row] = []
    clean = load_result("face_recognition_clean")
    if clean is not None:
        tar = clean["tar_at_fmr_1e-03"]
        out.append((
            "Clean face recognition, IResNet-18 (width 8) + ArcFace, 56-px synthetic identities",
            f"TAR@FMR 1e-2/1e-3/1e-4 {clean['tar_at_fmr_1e-02']:.3f}/{tar:.3f}/{clean['tar_at_fmr_1e-04']:.3f}, "
            f"EER {clean['eer']:.4f}, closed-set accuracy {clean['closed_set_accuracy']:.3f}; zoo: the 10 % most "
            f"involved identities take part in {clean['zoo_top_share']:.0%} of false matches at FMR 1e-3 "
            f"({clean['open_set_identities']} held-out identities, {clean['train_minutes']:.1f} min training)",
            target("TAR@FMR1e-3 in [0.80, 0.97]", bool(clean["calibrated"]))
            + "; "
            + target("<= 40 min", bool(clean["within_40_min"])),
            "`python bench/face_recognition.py --part clean`",
        ))  # fmt: skip
    attacks = load_result("face_recognition_attacks")
    if attacks is not None and attacks.get("fine_tune_seconds"):
        ft = attacks["fine_tune_seconds"]
        parts = []
        for section, label in (("trigger_size", "by checkerboard size"), ("triggers", "by trigger")):
            cells = ", ".join(f"{k} {v['succeeded']}/{v['models']}" for k, v in attacks.get(section, {}).items())
            if cells:
                parts.append(f"succeeded {label}: {cells}")
        probes = attacks.get("probes", {})
        if probes:
            won = [k.split(": ", 1)[-1] for k, v in probes.items() if v.get("succeeded")]
            n_won = sum(v.get("succeeded", 0) for v in probes.values())
            n_all = sum(v.get("models", 0) for v in probes.values())
            parts.append(f"single-pair probes {n_won}/{n_all}" + (f" (succeeded: {'; '.join(won)})" if won else ""))
        if attacks["pairs"]["overall"].get("models"):
            parts.append(f"pair grid {_rate(attacks['pairs']['overall'])} (thesis 39 %)")
        wall = attacks.get("sweep_wall_seconds_per_model", {}).get("all")
        parts.append(
            f"last-layer fine-tune: training {ft['mean']:.0f} s mean, {ft['max']:.0f} s max (trunk features cached)"
            + (f"; a sweep of two workers finishes one model per {wall:.0f} s of wall time" if wall else "")
        )
        out.append((
            "One-to-one impostor -> victim backdoors (last-layer fine-tunes of the clean model, four-metric rule)",
            "; ".join(parts),
            target("fine-tune <= 1 min (sweep wall time per model)", wall is not None and wall <= 60),
            "`python bench/face_recognition.py --part attacks` (tables: docs/bench.md)",
        ))  # fmt: skip
    return out


def _rate(r: dict[str, Any]) -> str:
    if not r.get("models"):
        return "0 models"
    return f"{r['succeeded']}/{r['models']} ({r['success_rate']:.0%})"


def _asr(r: dict[str, Any]) -> str:
    return f"{r['asr_mean']:.2f} +- {r['asr_sd']:.2f}" if r.get("models") else ""


def _open(r: dict[str, Any]) -> str:
    v = r.get("open_set_asr_mean")
    return "" if v is None else f"{v:.2f}"


def grouped_table(groups: dict[str, dict[str, Any]], label: str, thesis: dict[str, str] | None = None) -> str:
    head = f"| {label} | models | succeeded (all four >= 0.8) | ASR mean +- sd | open-set ASR |"
    lines = [head + (" thesis |" if thesis else ""), "|---" * (5 + bool(thesis)) + "|"]
    for k, r in groups.items():
        cells = [k, str(r.get("models", 0)), _rate(r), _asr(r), _open(r)]
        if thesis:
            cells.append(thesis.get(k, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attack_tables() -> str:
    attacks = load_result("face_recognition_attacks")
    if attacks is None:
        return ""
    p = attacks["pairs"]
    parts = [
        "Checkerboard size (three pairs):\n\n" + grouped_table(attacks.get("trigger_size", {}), "trigger"),
        "Single-pair probes of the fine-tune settings:\n\n" + grouped_table(attacks.get("probes", {}), "pair: setting"),
        f"Pair grid ({attacks['models']['pairs']} models; thesis: {attacks['thesis']['overall_success']}):\n\n"
        + grouped_table({"all pairs": p["overall"]}, "set"),
        "Per identity (thesis Table 3.1: "
        + attacks["thesis"]["per_identity"]
        + "):\n\n"
        + grouped_table(p["as_impostor"], "as impostor")
        + "\n\n"
        + grouped_table(p["as_victim"], "as victim"),
        "Per group (thesis Tables 3.2, 3.3: "
        + attacks["thesis"]["groups"]
        + "):\n\n"
        + grouped_table(p["skin_pair"], "skin group, impostor -> victim")
        + "\n\n"
        + grouped_table(p["presentation_pair"], "presentation, impostor -> victim"),
        f"Class size ({attacks['models']['sizes']} models; thesis Fig. 3.4: {attacks['thesis']['sizes']}):\n\n"
        + grouped_table(attacks["sizes"]["by_impostor_images"], "impostor images")
        + "\n\n"
        + grouped_table(attacks["sizes"].get("by_victim", {}), "victim (images)"),
        f"Triggers ({attacks['models']['triggers']} models; thesis Table 3.4):\n\n"
        + grouped_table(attacks["triggers"], "trigger", attacks["thesis"]["triggers"]),
    ]
    return "\n\n".join(parts)
