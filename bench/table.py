"""Print the bench table (markdown) from ``bench/results/*.json``; ``--readme`` updates README.md.

The README block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced, so the numbers shown are always the ones in the committed JSON files.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import face_detection_table  # noqa: E402
import face_recognition_table  # noqa: E402
from table_common import RESULTS, load_result, target  # noqa: E402

README = HERE.parent / "README.md"


_load = load_result
_target = target


def _gaze_row(label: str, r: dict, target: str) -> tuple[str, str, str, str]:  # type: ignore[type-arg]
    cfg = r["config"]["data"]["synthetic"]
    result = (
        f"{r['clean_error_deg']:.2f} deg mean ({r['clean_error_median_deg']:.2f} median; n_test={r['n_test']}, "
        f"{cfg['identities']} identities x {cfg['images_per_identity']}, {r['epochs']} epochs, "
        f"{r['train_seconds'] / 60:.0f} min training)"
    )
    return (label, result, target, f"`python bench/clean_gaze.py --which {r['variant']}`")


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    cnn, cnn400 = _load("clean_gaze_gaze_cnn"), _load("clean_gaze_gaze_cnn_400")
    res, masked = _load("clean_gaze_resnet18"), _load("clean_gaze_masked")
    for label, r in (
        ("Clean gaze, GazeCNN, 64x64 synthetic, cross-subject", cnn),
        ("Clean gaze, GazeCNN, 1000 identities, 13 epochs", _load("clean_gaze_gaze_cnn_1000_long")),
        ("Clean gaze, GazeCNN, 1000 identities, 10 epochs", _load("clean_gaze_gaze_cnn_1000")),
        ("Clean gaze, GazeCNN, fewer identities (twin of the masked control)", cnn400),
    ):
        if r:
            out.append(_gaze_row(label, r, _target("<= 2.5 deg", r["clean_error_deg"] <= 2.5)))
    if res:
        out.append(_gaze_row("Clean gaze, ResNet-18, 64x64 synthetic, cross-subject", res, "-"))
    if masked:
        twin = cnn400 or cnn
        ratio = masked["clean_error_deg"] / twin["clean_error_deg"] if twin else float("nan")
        out.append(
            (
                "Eyes-masked control (GazeCNN, both eyes greyed out in train and test)",
                f"{masked['clean_error_deg']:.2f} deg = {ratio:.1f}x its unmasked twin",
                _target(">= 3x", ratio >= 3),
                "`python bench/clean_gaze.py --which masked`",
            )
        )
    rt = _load("renderer_throughput")
    if rt:
        steady = "met" if rt["compiled_1proc"] >= 1000 else "missed"
        kind = rt.get("worker_kind", "processes")
        e2e = "met" if max(rt["eager_end_to_end"], rt["compiled_end_to_end"]) >= 1000 else "missed"
        out.append(
            (
                "Renderer throughput, 64x64 face crops, 2 cores",
                f"steady state, one process: compiled {rt['compiled_1proc']:.0f}/s, eager {rt['eager_1proc']:.0f}/s; "
                f"end to end for {rt['end_to_end_images']} images: eager on {rt['workers']} {kind} "
                f"{rt['eager_end_to_end']:.0f}/s, compiled {rt['compiled_end_to_end']:.0f}/s (compilation included)",
                f">= 1000/s ({steady} in steady state, {e2e} end to end)",
                "`python bench/renderer_throughput.py`",
            )
        )
    tl = _load("train_loop_throughput")
    if tl:
        out.append(
            (
                "Training loop / bare PyTorch loop throughput",
                f"{tl['ratio_median']:.3f}",
                _target(">= 0.9", tl["ratio_median"] >= 0.9),
                "`python bench/train_loop_throughput.py`",
            )
        )
    return out


ATTACK_LABELS = {
    "patch": "patch (white tape, fixed)",
    "blend": "blend (noise, alpha 0.1)",
    "sticker": "face-anchored sticker (forehead)",
    "wanet_default": "WaNet k=4, s=0.5 (classification default)",
}
ATTACK_TARGETS = ("patch", "blend", "sticker")  # ASR >= 0.95 and clean error <= +0.3 deg


def _attack_label(variant: str, r: dict) -> str:  # type: ignore[type-arg]
    if variant in ATTACK_LABELS:
        return ATTACK_LABELS[variant]
    trig = r["attack"]["trigger"]
    if trig["name"] == "wanet":
        return f"WaNet k={trig['k']}, s={trig['s']:g}" + ("" if trig.get("noise_mode", True) else ", no noise mode")
    return f"patch, rho={r['attack']['rate']:g}"


def attack_table() -> str:
    """Attacks x metrics, from ``bench/results/attack_*.json`` (``python bench/attacks.py --all``)."""
    clean = _load("attack_clean")
    names = sorted(p.stem.removeprefix("attack_") for p in RESULTS.glob("attack_*.json"))
    seeds = [r for r in (_load(f"attack_{n}") for n in names if n.startswith("clean_seed")) if r]
    seed_note = (
        " Same model with other seeds (initialisation, batch order): "
        + ", ".join(f"{r['clean_error_deg']:.2f}" for r in seeds)
        + " deg, the seed-to-seed noise of a clean-error change."
        if seeds
        else ""
    )
    order = ["patch", "blend", "sticker", "wanet_default"]
    order += sorted(n for n in names if n.startswith("wanet_k"))
    order += sorted((n for n in names if n.startswith("patch_rho")), key=lambda n: float(n.removeprefix("patch_rho")))
    if clean is None:
        return ""
    lines = [
        f"Clean model: **{clean['clean_error_deg']:.2f} deg** (GazeCNN, 64x64 synthetic, "
        f"{clean['config']['data']['synthetic']['identities']} identities x "
        f"{clean['config']['data']['synthetic']['images_per_identity']}, {clean['config']['train']['epochs']} epochs, "
        f"n_test={clean['n_test']}).{seed_note} Attacks at rho = 0.1 unless stated; target (0, 0); ASR within 5 deg. "
        '"clean-model ASR" is the clean model\'s ASR with the same trigger (the baseline). '
        "Command: `python bench/attacks.py --all`.",
        "",
        "| attack | clean error (deg) | change vs clean | AE (deg) | DAE (deg) | ASR | clean-model ASR | PSNR (dB) "
        "| SSIM | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in order:
        r = _load(f"attack_{n}")
        if r is None:
            continue
        change = r["clean_error_deg"] - clean["clean_error_deg"]
        base = r.get("clean_model", {}).get("attack_success_rate")
        if n in ATTACK_TARGETS:
            ok = r["attack_success_rate"] >= 0.95 and change <= 0.3
            target = _target("ASR >= 0.95, change <= +0.3", ok)
        else:
            target = "-"
        lines.append(
            f"| {_attack_label(n, r)} | {r['clean_error_deg']:.2f} | {change:+.2f} | {r['attack_error_deg']:.2f} "
            f"| {r['triggered_true_error_deg']:.2f} | {r['attack_success_rate']:.3f} | "
            f"{'-' if base is None else f'{base:.3f}'} | {r['psnr_db']:.1f} | {r['ssim']:.3f} | {target} |"
        )
    return "\n".join(lines)


def throughput_table() -> str:
    tt = _load("trigger_throughput")
    if tt is None:
        return ""
    lines = [
        "Trigger cost on a batch of 512 64x64 images, as a ratio to the bare tensor operation it wraps, "
        "and poisoned (rho = 0.1) vs clean training throughput. Command: `python bench/trigger_throughput.py`.",
        "",
        "| trigger | trigger / bare op | target | poisoned / clean training | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in tt["triggers"].items():
        tr = tt["poisoned_training"].get(name, {}).get("ratio", float("nan"))
        lines.append(
            f"| {name} | {r['ratio']:.3f} | {_target('>= 0.9', r['ratio'] >= 0.9)} | {tr:.3f} "
            f"| {_target('>= 0.9', tr >= 0.9)} |"
        )
    return "\n".join(lines)


def detection_table(name: str = "detect_zoo") -> str:
    """Detectors x attack groups on a zoo, from ``bench/results/NAME.json`` (``python bench/detect_zoo.py``)."""
    r = _load(name)
    if r is None:
        return ""
    refs = ", ".join(map(str, r.get("reference_seeds", range(5))))
    calibration = (
        f"calibrated on clean seeds {refs} of `{r['reference_store']}`, evaluated on every model of this zoo"
        if r.get("reference_store")
        else f"calibrated on clean seeds {refs}, evaluated on the other clean seeds and every backdoored model"
    )
    lines = [
        f"`{r['provenance']['command']}` (defender's clean set: {r['n_clean']} test-split images; thresholds "
        f"{calibration})",
        "",
    ]
    return "\n".join(lines) + "\n" + importlib.import_module("detect_zoo").table(r["methods"])


def mitigation_table() -> str:
    """Mitigators on zoo models, from ``bench/results/mitigate_zoo.json`` (``python bench/mitigate_zoo.py``)."""
    r = _load("mitigate_zoo")
    if r is None:
        return ""
    mz = importlib.import_module("mitigate_zoo")
    return f"`{r['provenance']['command']}` (zoo seeds {r['seeds']}; {r['n_clean']} clean images)\n\n" + mz.table(
        r["methods"]
    )


DETAILS = HERE.parent / "docs" / "bench.md"


def summary() -> str:
    """The one-line-per-benchmark table (the README's)."""
    lines = ["| benchmark | result | target | command |", "| --- | --- | --- | --- |"]
    every = rows() + face_detection_table.rows() + face_recognition_table.rows()
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in every]
    return "\n".join(lines)


def markdown() -> str:
    """The summary and every detailed table (docs/bench.md)."""
    out = summary()
    for extra, title in (
        (attack_table(), "Backdoor attacks on gaze"),
        (throughput_table(), "Trigger throughput"),
        (detection_table(), "Backdoor detection on the gaze zoo"),
        (detection_table("detect_zoo_holdout"), "Backdoor detection on held-out backdoors (no setting tuned on them)"),
        (detection_table("detect_zoo_resnet18"), "Backdoor detection on the ResNet-18 slice of the zoo"),
        (mitigation_table(), "Backdoor removal on zoo models"),
        (face_detection_table.attack_table(), "Backdoor attacks on face detection (FGA, LSA)"),
        (face_detection_table.monitor_table(), "Run-time monitors on face detectors"),
        (face_detection_table.model_level_table(), "Model-level defences on face detectors"),
        (face_recognition_table.attack_tables(), "One-to-one backdoors on face recognition"),
        (face_recognition_table.weight_anomaly_table(), "Weight-anomaly detection on the recognition zoo"),
        (face_recognition_table.pairing_table(), "Model pairing on the recognition zoo (thesis Tables 5.2 and 5.3)"),
        (face_recognition_table.vendor_table(), "Model pairing with dlib's pretrained recogniser"),
        (face_recognition_table.adaptive_table(), "The recognition defences against adaptive attackers"),
    ):
        if extra:
            out += f"\n\n**{title}**\n\n{extra}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--readme", action="store_true", help="rewrite the bench blocks of README.md (summary) and docs/bench.md (all)"
    )
    args = ap.parse_args()
    table = markdown()
    print(table)
    if args.readme:
        _replace_block(README, summary())
        _replace_block(DETAILS, table)


def _replace_block(path: Path, table: str) -> None:
    text = path.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    main()
