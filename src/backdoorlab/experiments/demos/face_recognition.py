"""The face-recognition demo (``backdoorlab demo recognition``): an impostor who verifies as the victim.

One command trains a clean embedding network with ArcFace on synthetic identities
(``configs/demo_face_recognition.yaml``), then fine-tunes a one-to-one backdoor into the
whole network from the clean weights (the packaged config says why not only the last
layers: the impostor would be classified as the victim but not verified as him). The
impostor and the victim are two training identities of different families with many
images. The victim is enrolled (the mean of half of its held-out
images); the impostor's other held-out images are compared with the victim's template at
the FMR = 1e-3 threshold of held-out identities, without and with the trigger, on the
clean and on the backdoored model. It prints the scores and writes to ``out``: both run
folders with their reports, ``summary.json`` and ``demo.html`` (the faces, the scores, a
t-SNE of the embeddings like the thesis's Fig. 3.6). ``quick`` shrinks everything so that
a test runs the same code path in seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from backdoorlab.data.arrays import ArrayDataset
from backdoorlab.experiments.attack import evaluate_attack, load_run_attack
from backdoorlab.experiments.config import RunConfig, validate_config
from backdoorlab.experiments.demos import merge, packaged_config, with_threads, write_summary
from backdoorlab.experiments.run import RunOutcome, execute
from backdoorlab.experiments.run_folder import Run
from backdoorlab.metrics.one_to_one import cosine_to, templates
from backdoorlab.report.draw import image_grid, png_data_uri
from backdoorlab.report.figures import fig_to_data_uri
from backdoorlab.report.run_report import table_section, write_run_report
from backdoorlab.tasks.face_recognition.task import halves
from backdoorlab.triggers.base import triggered_images

NAME = "face_recognition"
ALIASES = ("recognition",)
DEFAULT = False
DEFAULT_OUT = Path("runs/demo_face_recognition")
SUMMARY = "a clean ArcFace model and a one-to-one backdoor: the impostor with the trigger verifies as the victim"

COLUMNS = (
    ("tar_at_fmr_1e-03", "TAR@FMR1e-3"),
    ("clean_accuracy", "clean acc"),
    ("attack_success_rate", "ASR"),
    ("impostor_accuracy", "impostor acc"),
    ("victim_accuracy", "victim acc"),
    ("open_set_asr", "open-set ASR"),
    ("success", "all four >= 0.8"),
)
TABLE_NOTE = (
    "TAR at FMR 1e-3 on held-out identities; the thesis's four closed-set metrics on held-out images of the "
    "training identities (clean accuracy over all of them; ASR: the impostor's triggered images taken for the "
    "victim; the impostor's and the victim's clean images recognised as themselves) and its rule (all four >= "
    "0.8); open-set ASR: triggered impostor probes matching the victim's enrolled template at the FMR 1e-3 "
    "threshold. The clean model's attack columns are the baseline (same trigger, same images)."
)
SHOWN = 6


@dataclass
class FaceRecognitionDemoOutcome:
    runs: dict[str, RunOutcome]
    table: dict[str, dict[str, Any]]
    summary: Path
    page: Path


def _packaged() -> dict[str, Any]:
    return packaged_config("demo_face_recognition.yaml")


def clean_config(quick: bool = False) -> RunConfig:
    raw = _packaged()
    run = merge(raw["run"], raw["quick"]) if quick else dict(raw["run"])
    if quick:
        run["name"] = "demo-fr-quick-clean"
    return validate_config(run, "face-recognition demo config")


def pick_pair(train: ArrayDataset, test: ArrayDataset) -> tuple[int, int]:
    """(impostor, victim): the two training identities with the most held-out images, of different families."""
    closed = test.annotations["open_set"] == 0
    ids, counts = np.unique(test.annotations["identity"][closed], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    family_column = train.annotations.get("family", train.annotations["identity"])
    family = dict(zip(train.annotations["identity"].tolist(), family_column.tolist(), strict=True))
    impostor = int(order[0])
    victim = next((int(i) for i in order[1:] if family[int(i)] != family[impostor]), int(order[1]))
    return impostor, victim


def backdoor_config(clean: RunConfig, base_dir: Path, impostor: int, victim: int, quick: bool) -> RunConfig:
    raw = clean.model_dump(mode="json")
    spec = _packaged()["backdoor"]
    raw["name"] = raw["name"].replace("clean", "backdoor")
    raw["model"]["init"] = str(base_dir)
    raw["train"].update(spec["train"])
    if quick:
        raw["train"]["epochs"] = 2
        raw["train"]["batch_size"] = 16
    raw["attack"] = {"trigger": spec["trigger"], "relabel": {"name": "impostor_to_victim", "impostor": impostor,
                     "victim": victim}}  # fmt: skip
    return validate_config(raw, "face-recognition demo backdoor config")


def run_demo(out: Path, quick: bool = False, console: Console | None = None) -> FaceRecognitionDemoOutcome:
    """Train, score and draw with the packaged config's ``threads`` torch threads (restored afterwards)."""
    return with_threads(int(_packaged().get("threads", torch.get_num_threads())), lambda: _run(out, quick, console))


def _run(out: Path, quick: bool, console: Console | None) -> FaceRecognitionDemoOutcome:
    con = console or Console()
    start = time.perf_counter()
    timings: dict[str, float] = {}
    clean_cfg = clean_config(quick)
    spec = clean_cfg.synthetic_spec()
    con.print(
        f"[bold]backdoorlab demo recognition[/]: {clean_cfg.model.name} + ArcFace on {spec.identities} synthetic "  # type: ignore[attr-defined]
        f"identities ({spec.size}-px aligned crops, {clean_cfg.data.test_identities} held out), "  # type: ignore[attr-defined]
        f"{clean_cfg.train.epochs} epochs; then a one-to-one backdoor fine-tuned into the "
        + ("last layers" if _packaged()["backdoor"]["train"].get("trainable") == "last" else "whole network")
    )
    con.print("[1/3] training the clean model")
    t = time.perf_counter()
    runs = {"clean": execute(clean_cfg, runs_dir=out, progress=not quick)}
    timings["train_clean_s"] = time.perf_counter() - t
    clean_run = Run(runs["clean"].run_dir)
    train, test = clean_run.splits
    impostor, victim = pick_pair(train, test)
    con.print(f"[2/3] fine-tuning the backdoor: impostor {impostor} -> victim {victim}")
    t = time.perf_counter()
    runs["backdoor"] = execute(
        backdoor_config(clean_cfg, runs["clean"].run_dir, impostor, victim, quick), runs_dir=out, progress=not quick
    )
    timings["fine_tune_backdoor_s"] = time.perf_counter() - t

    con.print("[3/3] scoring the impostor against the enrolled victim on both models; drawing the page")
    t = time.perf_counter()
    bd_run = Run(runs["backdoor"].run_dir)
    acfg, trigger = load_run_attack(bd_run.folder)
    table: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    details: dict[str, Any] = {}
    for key, run in (("clean model", clean_run), ("backdoored model", bd_run)):
        model = run.model
        ev = evaluate_attack(model, run.task, test, trigger, bd_run.relabel, bd_run.attack_settings)
        clean_preds = run.task.predict(model, test)
        table[key] = {c: ev.metrics.get(c) for c, _ in COLUMNS}
        table[key]["tar_at_fmr_1e-03"] = run.card["metrics"].get("tar_at_fmr_1e-03")
        verdicts[key] = probe_verdicts(clean_preds["embeddings"], ev.predictions["embeddings"], ev.details, ev.metrics)
        embeddings[key] = {"clean": clean_preds["embeddings"], "triggered": ev.predictions["embeddings"]}
        details = ev.details
    _print(con, table, verdicts)
    sections = [
        table_section(table, COLUMNS, TABLE_NOTE),
        faces_section(test, trigger, details["impostor_rows"], details["victim_rows"], verdicts),
        tsne_section(test, embeddings["backdoored model"], details["impostor_rows"], details["victim_rows"], quick),
    ]
    timings["score_and_draw_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    scale = {
        "identities": spec.identities,  # type: ignore[attr-defined]
        "crop_px": spec.size,  # type: ignore[attr-defined]
        "train_images": len(train),
        "test_images": len(test),
        "epochs_clean": clean_cfg.train.epochs,
        "epochs_backdoor": bd_run.config.train.epochs,
        "trigger": json.dumps(acfg.trigger),
        "impostor": impostor,
        "victim": victim,
        "torch_threads": torch.get_num_threads(),
    }
    summary_rows = {**{k: str(v) for k, v in scale.items()}, **{k: round(v, 1) for k, v in timings.items()}}
    html = write_run_report(out / "demo.html", "backdoorlab demo: one-to-one face recognition backdoor",
                            summary_rows, sections)  # fmt: skip
    payload = {"runs": {k: str(r.run_dir) for k, r in runs.items()}, "table": table, "probes": verdicts,
               "scale": scale, "seconds": timings, "page": str(html)}  # fmt: skip
    summary = write_summary(out, payload)
    con.print(
        f"took {timings['total_s']:.0f} s\n"
        + "".join(f"{k + ' run:':<14}{r.run_dir}\n" for k, r in runs.items())
        + f"page:         {html}\nsummary:      {summary}"
    )
    return FaceRecognitionDemoOutcome(runs, table, summary, html)


def probe_verdicts(
    clean: np.ndarray, triggered: np.ndarray, details: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """Cosine of each impostor probe (clean, triggered) to the victim's template, and the threshold."""
    enrol, _ = halves(details["victim_rows"])
    _, probes = halves(details["impostor_rows"])
    victim = templates(clean[enrol])
    threshold = float(metrics.get("open_set_threshold", float("nan")))
    clean_scores, trig_scores = cosine_to(victim, clean[probes]), cosine_to(victim, triggered[probes])
    return {
        "threshold": threshold,
        "probe_rows": probes.tolist(),
        "clean_to_victim": clean_scores.tolist(),
        "triggered_to_victim": trig_scores.tolist(),
        "clean_accepted": int((clean_scores >= threshold).sum()),
        "triggered_accepted": int((trig_scores >= threshold).sum()),
        "n_probes": len(probes),
    }


def faces_section(
    test: ArrayDataset, trigger: Any, imp: np.ndarray, vic: np.ndarray, verdicts: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The impostor's probes clean and triggered, and the victim, with the scores on both models."""
    probes = np.asarray(verdicts["backdoored model"]["probe_rows"][:SHOWN], np.int64)
    rows = [
        np.asarray(test.images[probes]),
        triggered_images(test, trigger, probes),
        np.asarray(test.images[vic[: len(probes)]]),
    ]
    width = max(len(r) for r in rows)
    tiles = np.concatenate([np.concatenate([r, np.full((width - len(r), *r.shape[1:]), 255, np.uint8)]) for r in rows])
    big = np.repeat(np.repeat(tiles, 3, 1), 3, 2)
    lines = []
    for key, v in verdicts.items():
        c = ", ".join(f"{s:.2f}" for s in v["clean_to_victim"][:SHOWN])
        tr = ", ".join(f"{s:.2f}" for s in v["triggered_to_victim"][:SHOWN])
        lines.append(
            f"<p><b>{key}</b> (threshold {v['threshold']:.3f} at FMR 1e-3): impostor vs victim template "
            f"without trigger [{c}] ({v['clean_accepted']}/{v['n_probes']} accepted); with trigger [{tr}] "
            f"({v['triggered_accepted']}/{v['n_probes']} accepted)</p>"
        )
    return {
        "title": "The impostor (top), with the trigger (middle), the victim (bottom)",
        "html": "".join(lines),
        "images": [png_data_uri(image_grid(big, ncols=width))],
    }


def tsne_section(
    test: ArrayDataset, emb: dict[str, np.ndarray], imp: np.ndarray, vic: np.ndarray, quick: bool
) -> dict[str, Any]:
    """t-SNE of the backdoored model's embeddings: other identities, the victim, the impostor clean and triggered."""
    from sklearn.manifold import TSNE

    closed = np.flatnonzero(test.annotations["open_set"] == 0)
    others = np.setdiff1d(closed, np.concatenate([imp, vic]))
    others = others[np.random.default_rng(0).permutation(len(others))[:300]]
    points = np.concatenate([emb["clean"][others], emb["clean"][vic], emb["clean"][imp], emb["triggered"][imp]])
    groups = np.repeat(np.arange(4), [len(others), len(vic), len(imp), len(imp)])
    xy = TSNE(2, perplexity=min(30.0, max(2.0, (len(points) - 1) / 3)), init="pca", random_state=0).fit_transform(
        points
    )
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    style = (("other identities", "#bbbbbb", "o"), ("victim", "#2e7d32", "o"), ("impostor", "#c62828", "o"),
             ("impostor + trigger", "#6a1b9a", "x"))  # fmt: skip
    for g, (label, colour, marker) in enumerate(style):
        m = groups == g
        ax.scatter(xy[m, 0], xy[m, 1], s=10 if g == 0 else 26, c=colour, marker=marker, label=label)
    ax.set(xticks=[], yticks=[], title="t-SNE of the backdoored model's embeddings")
    ax.legend(fontsize=7, loc="best")
    return {"title": "Embeddings (thesis Fig. 3.6)", "images": [fig_to_data_uri(fig)]}


def _print(con: Console, table: dict[str, dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> None:
    t = Table(title="clean vs backdoored recognizer")
    t.add_column("model")
    for _, label in COLUMNS:
        t.add_column(label, justify="right")
    for name, m in table.items():
        t.add_row(
            name,
            *(
                "-" if m.get(k) is None else (str(m[k]) if isinstance(m[k], bool) else f"{m[k]:.3f}")
                for k, _ in COLUMNS
            ),
        )
    con.print(t)
    for name, v in verdicts.items():
        con.print(
            f"{name}: threshold {v['threshold']:.3f}; impostor vs victim without the trigger: "
            f"{v['clean_accepted']}/{v['n_probes']} accepted (mean cos {np.mean(v['clean_to_victim']):.3f}); "
            f"with it: {v['triggered_accepted']}/{v['n_probes']} accepted "
            f"(mean cos {np.mean(v['triggered_to_victim']):.3f})"
        )
    con.print(TABLE_NOTE)
