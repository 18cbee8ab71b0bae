"""Print the bench table (markdown) from ``bench/results/*.json``; ``--readme`` updates README.md.

The README block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced, so the numbers shown are always the ones in the committed JSON files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"


def _load(name: str) -> dict | None:  # type: ignore[type-arg]
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _target(text: str, met: bool) -> str:
    return f"{text} ({'met' if met else 'missed'})"


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
        e2e = "met" if max(rt["eager_end_to_end"], rt["compiled_end_to_end"]) >= 1000 else "missed"
        out.append(
            (
                "Renderer throughput, 64x64 face crops, 2 cores",
                f"steady state, one process: compiled {rt['compiled_1proc']:.0f}/s, eager {rt['eager_1proc']:.0f}/s; "
                f"end to end for {rt['end_to_end_images']} images: eager on {rt['workers']} processes "
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


def markdown() -> str:
    lines = ["| benchmark | result | target | command |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readme", action="store_true", help="rewrite the bench block in README.md")
    args = ap.parse_args()
    table = markdown()
    print(table)
    if args.readme:
        text = README.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"{README} has no {start} ... {end} block")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        README.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    main()
