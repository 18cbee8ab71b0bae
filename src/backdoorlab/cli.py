"""Command line: ``backdoorlab data synth | train | eval | runs | sweep | demo``.

Every command turns a :class:`~backdoorlab.errors.BackdoorLabError` into one line on
stderr and exit code 2, so scripts and sweeps can rely on the exit status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from backdoorlab.errors import BackdoorLabError, ConfigError, RunInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="backdoorlab: inject, detect and remove backdoors in gaze, face-detection and face-recognition models.",
)
data_app = typer.Typer(no_args_is_help=True, help="Create or inspect datasets.")
app.add_typer(data_app, name="data")


def _console(stderr: bool = False) -> Console:
    """Terminal width on a terminal; wide and unwrapped when piped or captured.

    Output that goes to a file or another program (CI logs, ``grep``) must keep run
    ids, paths and metric names on one line.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 240
    return Console(stderr=stderr, width=width, soft_wrap=True)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BackdoorLabError as exc:
            # the message is plain text: paths and reprs may hold '[...]', which markup would eat
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
            raise typer.Exit(2) from None
        except RunInterrupted as exc:  # SIGTERM: the run is recorded as failed ("interrupted")
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(128 + 15) from None
        except OSError as exc:  # a read-only runs folder or store, a full disk: the file and the reason
            where = f"{exc.filename}: " if exc.filename else ""
            err_console.print(f"[bold red]error:[/] {escape(where + (exc.strerror or str(exc)))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help="folder to write (images.npy, ann_*.npy, meta.json)")],
    kind: Annotated[str, typer.Option(help="face (normalised face crops) or eye (36x60 eye crops)")] = "face",
    identities: Annotated[int, typer.Option(help="number of people")] = 30,
    images_per_identity: Annotated[int, typer.Option(help="images of each person")] = 200,
    size: Annotated[int, typer.Option(help="face crop side in pixels (16-224)")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    gallery: Annotated[Path | None, typer.Option(help="also write a PNG grid with gaze arrows")] = None,
) -> None:
    """Render a synthetic gaze dataset with exact labels."""
    from pydantic import ValidationError

    from backdoorlab.data.synthetic.dataset import SyntheticGazeSpec, synthesize

    try:
        spec = SyntheticGazeSpec(
            kind=kind,
            identities=identities,
            images_per_identity=images_per_identity,  # type: ignore[arg-type]
            size=size,
            seed=seed,
        )
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        ) from None
    ds = synthesize(spec)
    ds.save(out)
    if gallery is not None:
        from backdoorlab.report.gallery import write_gallery

        write_gallery(ds, gallery)
    console.print(f"wrote {len(ds)} images {ds.images.shape[1:]} to {out} (fingerprint {ds.fingerprint})")


@data_app.command("convert")
@friendly_errors
def data_convert(
    kind: Annotated[
        str,
        typer.Argument(
            help="mpiifacegaze, mpiifacegaze-normalized, mpiigaze, ethxgaze, widerface, widerface-retinaface, celeba, "
            "casia-webface, lfw, ffhq or aligned-crops"
        ),
    ],
    source: Annotated[Path, typer.Argument(help="root folder (or file) of the published release")],
    out: Annotated[Path, typer.Argument(help="folder to write in backdoorlab's format")],
    option: Annotated[list[str] | None, typer.Option(help="loader option KEY=VALUE, e.g. size=64 (repeatable)")] = None,
) -> None:
    """Convert a real dataset to a backdoorlab dataset folder (our conventions)."""
    from backdoorlab.data.real import load_real_dataset
    from backdoorlab.experiments.config import parse_override

    kwargs: dict[str, Any] = {}
    for text in option or []:
        keys, value = parse_override(text)
        kwargs[".".join(keys)] = value
    ds = load_real_dataset(kind, str(source), **kwargs)
    ds.save(out)
    console.print(f"wrote {len(ds)} images {ds.images.shape[1:]} to {out} (fingerprint {ds.fingerprint})")


@app.command()
@friendly_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set train.epochs=3")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
    store: Annotated[Path | None, typer.Option(help="SQLite results store (default RUNS_DIR/results.sqlite)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train and evaluate one run from a config."""
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.run import execute

    cfg = load_config(config, set_ or [])
    outcome = execute(cfg, runs_dir=runs_dir, store_path=store, progress=not quiet)
    _print_metrics(outcome.metrics, title=f"run {outcome.run_id}")
    console.print(f"run folder: {outcome.run_dir}")


@app.command("eval")
@friendly_errors
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (model.safetensors + model.json)")],
    data: Annotated[
        str | None,
        typer.Option(
            help="'run' (the run's own test split, default), a dataset folder, "
            "or KIND:PATH with KIND a real-dataset kind (see `data convert --help`)"
        ),
    ] = None,
    unsafe_load: Annotated[
        bool, typer.Option(help="read non-safetensors weights with torch.load(weights_only=True)")
    ] = False,
    device: Annotated[str, typer.Option()] = "auto",
    attack: Annotated[
        str | None,
        typer.Option(
            help="score a backdoor too: a YAML file with an 'attack' section, or an attacked run's folder "
            "(its stored trigger). Default: the run's own attack, if it has one."
        ),
    ] = None,
) -> None:
    """Evaluate a trained model; writes RUN_DIR/eval/<data>.json (attack metrics included when a trigger applies)."""
    from backdoorlab.experiments.evaluate import evaluate_run

    metrics, out = evaluate_run(run_dir, data or "run", unsafe_load=unsafe_load, device=device, attack=attack)
    _print_metrics(metrics, title=f"eval {run_dir.name} on {data or 'run'}")
    console.print(f"written: {out}")


RUN_STATUSES = ("running", "complete", "failed")


def _run_value(row: dict[str, Any], column: str) -> Any:
    """A metric of a store row; ``headline`` is the row's task headline as ``name=value``."""
    if column != "headline":
        return row["metrics"].get(column)
    from backdoorlab.experiments.sweep_progress import row_headline

    headline = row_headline(row)
    return None if headline is None else f"{headline[0]}={_fmt(headline[1])}"


@app.command()
@friendly_errors
def runs(
    store: Annotated[Path, typer.Option(help="SQLite results store")] = Path("runs/results.sqlite"),
    status: Annotated[str | None, typer.Option(help="running, complete or failed (with --sweep also 'to run')")] = None,
    name: Annotated[str | None, typer.Option(help="substring of the run name")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="metric columns to compare (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    sweep: Annotated[
        Path | None, typer.Option(help="sweep YAML: show each of its points (complete, running, failed, to run)")
    ] = None,
    watch: Annotated[
        float | None, typer.Option(help="with --sweep: refresh every SECONDS until nothing runs or waits", min=0.1)
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(help="mark failed: running rows whose process is gone, complete ones whose folder is damaged"),
    ] = False,
) -> None:
    """List and compare runs recorded in the results store, or follow a sweep's points (--sweep)."""
    from backdoorlab.experiments.store import ResultsStore

    if repair:
        from backdoorlab.experiments.run import repair_store

        if not store.is_file():
            raise ConfigError(f"results store {store} does not exist")
        fixed = repair_store(ResultsStore(store))
        for run_id, reason in fixed:
            console.print(f"marked failed: {run_id}: {escape(reason)}", highlight=False)
        console.print(f"{store}: {len(fixed)} row(s) repaired", highlight=False)
        return

    if sweep is not None:
        if name or metric:
            raise ConfigError("--name and --metric choose runs to list; with --sweep the sweep's points are shown")
        _sweep_view(sweep, store, status=status, watch=watch, as_json=as_json)
        return
    if watch is not None:
        raise ConfigError("--watch follows a sweep: pass --sweep SWEEP.yaml too")
    if status is not None and status not in RUN_STATUSES:
        choices = ", ".join(RUN_STATUSES)
        raise ConfigError(f"--status must be one of {choices} (with --sweep also 'to run'); got {status!r}")
    if not store.is_file():
        raise ConfigError(f"results store {store} does not exist (train a run first, or pass --store)")
    rows = ResultsStore(store).list(status=status, name_like=name)
    cols = metric or ["headline", "n_test", "train_seconds"]
    if as_json:
        print(
            json.dumps(
                [
                    {
                        **{k: r[k] for k in ("run_id", "name", "status", "model_name", "error")},
                        **{c: _run_value(r, c) for c in cols},
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"runs in {store}")
    for c in ["run", "status", "model", *cols]:
        table.add_column(c, overflow="fold")
    for r in rows:
        vals = [_fmt(_run_value(r, c)) for c in cols]
        status_txt = r["status"] if r["status"] != "failed" else f"failed: {(r['error'] or '')[:60]}"
        table.add_row(r["run_id"], status_txt, r["model_name"] or "", *vals)
    console.print(table)


@app.command()
@friendly_errors
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep YAML: base config, grid / runs of overrides, resources")],
    engine: Annotated[str, typer.Option(help="local (processes on this machine) or ray")] = "local",
    workers: Annotated[int, typer.Option(help="local engine: runs at a time")] = 1,
    address: Annotated[str | None, typer.Option(help="ray engine: cluster address (default: a local Ray)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run folders go")] = Path("runs"),
    store: Annotated[Path | None, typer.Option(help="SQLite results store (default RUNS_DIR/results.sqlite)")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the runs and what is already complete; run nothing")] = False,
    show_config: Annotated[
        bool, typer.Option(help="with --dry-run: print each point's resolved config (every default filled in)")
    ] = False,
) -> None:
    """Run every point of a sweep that is not complete yet (resumable; failures do not stop it)."""
    from backdoorlab.experiments.sweep import expand, load_sweep, run_sweep
    from backdoorlab.experiments.sweep_progress import sweep_status

    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    sweep_spec, base = load_sweep(spec)
    planned = expand(sweep_spec, base, str(spec))
    if show_config and not dry_run:
        raise ConfigError("--show-config goes with --dry-run")
    if dry_run:
        db_path = store or runs_dir / "results.sqlite"
        console.print(_sweep_table(spec, db_path, sweep_status(planned, _open_store(db_path))))
        for run in planned if show_config else []:
            print(f"--- {run.config.name} (config hash {run.config_hash})\n{run.config.to_yaml()}", end="")
        return
    out = run_sweep(
        planned, runs_dir, store, engine=engine, workers=workers,  # type: ignore[arg-type]
        resources=sweep_spec.resources, address=address,
        on_event=lambda event: console.print(event.line(), highlight=False, markup=False),
    )  # fmt: skip
    console.print(
        f"sweep {spec.name}: {out.planned} runs; {len(out.skipped)} already complete, "
        f"{len(out.completed)} completed now, {len(out.failed)} failed"
        + (f", {len(out.claimed)} skipped (another sweep's)" if out.claimed else "")
        + (f"; stopped ({out.interrupted}): run it again to resume" if out.interrupted else ""),
        highlight=False,
    )
    if out.interrupted:
        raise typer.Exit(130)
    if out.failed:
        raise typer.Exit(1)


def _open_store(path: Path) -> Any:
    """The results store at ``path``, or ``None`` when no run has written one yet (nothing created)."""
    from backdoorlab.experiments.store import ResultsStore

    return ResultsStore(path) if path.is_file() else None


def _sweep_table(spec: Path, store: Path, st: Any, state: str | None = None) -> Table:
    """One row per planned point (optionally only those in ``state``), totals and ETA as caption."""
    from backdoorlab.experiments.sweep_progress import format_duration, format_headline

    table = Table(title=f"sweep {spec} in {store}" + ("" if store.is_file() else " (no store yet)"),
                  caption=st.totals(), caption_justify="left")  # fmt: skip
    for col in ("run name", "status", "run id", "headline", "time", "overrides"):
        table.add_column(col, overflow="fold")
    for p in st.points:
        if state is not None and p.state != state:
            continue
        status_txt = p.state if p.state != "failed" else f"failed: {(p.error.splitlines() or [''])[0][:80]}"
        took = format_duration(p.seconds) if p.seconds is not None else ""
        cells = (p.name, status_txt, p.run_id, format_headline(p.headline), took, json.dumps(p.overrides))
        table.add_row(*(escape(c) for c in cells))
    return table


def _sweep_view(spec: Path, store: Path, status: str | None, watch: float | None, as_json: bool) -> None:
    """``runs --sweep``: the sweep's points as the store sees them, once or every ``watch`` seconds.

    Why under ``runs`` rather than a command of its own: it is the runs listing narrowed
    to one sweep's points (same store option, same table), plus the points that have no
    run yet. Read-only, so it is safe beside a sweep writing the store; ``--watch`` stops
    by itself once nothing is running or waiting, and on Ctrl-C without a traceback.
    """
    import dataclasses
    import time

    from backdoorlab.experiments.sweep import expand, load_sweep
    from backdoorlab.experiments.sweep_progress import sweep_status

    if as_json and watch is not None:
        raise ConfigError("--watch draws a table; use --json without it")
    planned = expand(*load_sweep(spec), str(spec))
    if as_json:
        st = sweep_status(planned, _open_store(store))
        points = [dataclasses.asdict(p) for p in st.points if status in (None, p.state)]
        print(json.dumps({"points": points, "totals": st.totals(), "eta_seconds": st.eta_seconds}, indent=2))
        return
    try:
        while True:
            st = sweep_status(planned, _open_store(store))
            if watch is not None and console.is_terminal:
                console.clear()
            console.print(_sweep_table(spec, store, st, status))
            if watch is None or not st.active:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        console.print("stopped watching (the sweep itself goes on)")


_PARAM_HELP = (
    "a setting as KEY=VALUE (repeatable), e.g. --param steps=300 --param budget=0.02; dotted keys set a section "
    "(--param tune.lr=2e-4: the fine-tuning schedule of a mitigator); overrides --config"
)
_CONFIG_HELP = "a defence config YAML: {method: NAME, SETTING: VALUE, tune: {SETTING: VALUE}}"


def _defence_config(  # type: ignore[no-untyped-def]
    run_dir: Path, shape: str, config: Path | None, method: str | None, param: list[str] | None, device: str | None
):
    """The validated settings ``detect`` / ``mitigate`` run with, from --config, --method, --param and --device.

    Without a method in either, the run's task names its default defence.
    """
    from backdoorlab.experiments.defence_config import load_defence_config, parse_params
    from backdoorlab.experiments.run_folder import Run

    default = Run(run_dir).task.default_defence if method is None else None
    return load_defence_config(shape, config, method, parse_params(param), device, default_method=default)


def _fmt_estimate(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_fmt_estimate(v) for v in value) + ")"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


@app.command()
@friendly_errors
def detect(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (model.safetensors + model.json + config.yaml)")],
    method: Annotated[
        str | None, typer.Option(help="a registered detection method (default: the config's, else the task's)")
    ] = None,
    n_clean: Annotated[int, typer.Option(help="clean images the defender holds (from the run's test split)")] = 256,
    config: Annotated[Path | None, typer.Option("--config", help=_CONFIG_HELP)] = None,
    param: Annotated[list[str] | None, typer.Option(help=_PARAM_HELP)] = None,
    reference: Annotated[
        list[Path] | None, typer.Option(help="a clean reference run to calibrate the threshold on (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN_DIR/defence/METHOD)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the config's, else auto)")] = None,
    unsafe_load: Annotated[bool, typer.Option(help="read non-safetensors weights (trusted files only)")] = False,
) -> None:
    """Is this model backdoored? Writes verdict.json and the reversed-trigger images; exit 0 either way."""
    from backdoorlab.experiments.defend import detect_run

    settings = _defence_config(run_dir, "detection", config, method, param, device)
    verdict, path = detect_run(
        run_dir, n_clean=n_clean, references=reference, out_dir=out, unsafe_load=unsafe_load, config=settings
    )
    flag = "[bold red]BACKDOORED[/]" if verdict.backdoored else "[green]clean[/]"
    estimates = "".join(f"estimated {k} {_fmt_estimate(v)}, " for k, v in verdict.estimates.items())
    console.print(
        f"{settings.method}: {flag}  score {verdict.score:.3f} (threshold {verdict.threshold:.3f}), "
        f"{escape(estimates)}{verdict.seconds:.1f} s"
    )
    console.print(f"written: {path}")


@app.command("detect-population")
@friendly_errors
def detect_population(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders to inspect")],
    reference: Annotated[
        list[Path] | None, typer.Option(help="a clean reference run the detector learns from (repeatable)")
    ] = None,
    reference_store: Annotated[
        Path | None, typer.Option(help="a results store whose complete clean runs are all references")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="a registered population-detection method (default: weight_anomaly)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help=_CONFIG_HELP)] = None,
    param: Annotated[list[str] | None, typer.Option(help=_PARAM_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN_DIR/defence/METHOD per run)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the config's, else auto)")] = None,
    unsafe_load: Annotated[bool, typer.Option(help="read non-safetensors weights (trusted files only)")] = False,
) -> None:
    """Are these models backdoored, judged by their weights against clean reference models? Exit 0 either way."""
    from backdoorlab.experiments.defence_config import load_defence_config, parse_params
    from backdoorlab.experiments.defend import clean_runs, detect_population

    references = list(reference or []) + (clean_runs(reference_store) if reference_store else [])
    if not references:
        raise ConfigError("no reference networks: pass --reference RUN (repeatable) or --reference-store STORE")
    settings = load_defence_config(
        "population detection", config, method, parse_params(param), device, default_method="weight_anomaly"
    )
    results = detect_population(run_dirs, references, settings, out_dir=out, unsafe_load=unsafe_load)
    table = Table(title=f"{settings.method}: {len(references)} clean references")
    for col in ("run", "verdict", "score", "threshold", "written"):
        table.add_column(col)
    for run_dir, (verdict, path) in zip(run_dirs, results, strict=True):
        flag = "[bold red]BACKDOORED[/]" if verdict.backdoored else "[green]clean[/]"
        table.add_row(escape(str(run_dir)), flag, f"{verdict.score:.2f}", f"{verdict.threshold:.2f}", escape(str(path)))
    console.print(table)


pair_app = typer.Typer(
    no_args_is_help=True,
    help="Model pairing: guard a recognizer with a second one and flag the faces on which they disagree.",
)
app.add_typer(pair_app, name="pair")


@pair_app.command("fit")
@friendly_errors
def pair_fit(
    probe: Annotated[Path, typer.Argument(help="the model to guard (its embeddings are translated): a run folder, "
                                         "'dlib' (dlib's pretrained ResNet) or an .onnx file")],
    reference: Annotated[Path, typer.Argument(help="the second model, trained apart (its space is the common one): "
                                             "a run folder, 'dlib' or an .onnx file")],
    faces: Annotated[
        Path, typer.Option(help="unlabeled faces of people neither model trained on: an array dataset folder or a "
                           "folder of .png/.jpg (e.g. FFHQ)")
    ],
    out: Annotated[Path, typer.Option(help="the pairing folder to write")],
    translator: Annotated[str, typer.Option(help="affine (learned, any sizes) or procrustes (closed form)")] = "affine",
    fnmr: Annotated[float, typer.Option(help="clean false-alarm rate the threshold is set at")] = 0.01,
    calibration_share: Annotated[float, typer.Option(help="share of the faces held back for the threshold")] = 1 / 3,
    steps: Annotated[int, typer.Option(help="affine translator: batches of 128")] = 300,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    unsafe_load: Annotated[bool, typer.Option(help="read non-safetensors weights (trusted files only)")] = False,
    onnx_normalize: Annotated[str, typer.Option(help="an ONNX model's input: insightface ((x - 0.5) / 0.5 of "
                                                "[0, 1] RGB) or none ([0, 1])")] = "insightface",
) -> None:
    """Fit the translator between two models and set the threshold on clean faces; writes a pairing folder."""
    from backdoorlab.experiments.pairing import fit_pairing

    record = fit_pairing(probe, reference, faces, out, translator, fnmr, calibration_share, steps, seed, device,
                         unsafe_load, onnx_normalize)  # fmt: skip
    console.print(
        f"{record['translator']} translator {record['dims']['probe']}-d -> {record['dims']['reference']}-d on "
        f"{record['fit_faces']} faces; threshold {record['threshold']:.4f} (1 - cos) at clean FNMR {fnmr:g} on "
        f"{record['calibration_faces']} held-back faces (their mean cos {record['genuine_cos_mean']:.3f})"
    )
    console.print(f"written: {escape(str(out))}")


@pair_app.command("score")
@friendly_errors
def pair_score(
    pairing: Annotated[Path, typer.Argument(help="a pairing folder (backdoorlab pair fit)")],
    images: Annotated[Path, typer.Option(help="an array dataset folder or a folder of .png/.jpg faces")],
    out: Annotated[Path | None, typer.Option(help="CSV to write: image, score, flagged")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    unsafe_load: Annotated[bool, typer.Option(help="read non-safetensors weights (trusted files only)")] = False,
) -> None:
    """Score faces with a fitted pairing: the models' disagreement, flagged above the threshold. Exit 0 either way."""
    import csv

    import numpy as np

    from backdoorlab.experiments.pairing import score_pairing

    result = score_pairing(pairing, images, device, unsafe_load)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "score", "flagged"])
            writer.writerows(zip(result.names, (f"{v:.6f}" for v in result.scores), result.flagged.astype(int),
                                 strict=True))  # fmt: skip
    n = len(result.scores)
    console.print(
        f"{int(result.flagged.sum())} of {n} faces flagged (threshold {result.threshold:.4f}); "
        f"scores min {result.scores.min():.4f}, median {np.median(result.scores):.4f}, max {result.scores.max():.4f}"
    )
    if out is not None:
        console.print(f"written: {escape(str(out))}")


@app.command()
@friendly_errors
def mitigate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (model.safetensors + model.json + config.yaml)")],
    method: Annotated[
        str | None, typer.Option(help="a registered mitigation method (default: the config's, else the task's)")
    ] = None,
    n_clean: Annotated[int, typer.Option(help="clean images the defender holds (from the run's test split)")] = 256,
    config: Annotated[Path | None, typer.Option("--config", help=_CONFIG_HELP)] = None,
    param: Annotated[list[str] | None, typer.Option(help=_PARAM_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN_DIR/mitigated/METHOD)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: the config's, else auto)")] = None,
    unsafe_load: Annotated[bool, typer.Option(help="read non-safetensors weights (trusted files only)")] = False,
) -> None:
    """Remove a backdoor; saves the repaired model and mitigation.json (before/after, real trigger if known)."""
    from backdoorlab.experiments.defend import mitigate_run

    settings = _defence_config(run_dir, "mitigation", config, method, param, device)
    record, path = mitigate_run(run_dir, n_clean=n_clean, out_dir=out, unsafe_load=unsafe_load, config=settings)
    table = Table(title=f"{settings.method} on {run_dir.name} ({record['n_scored']} held-out images)")
    for col in ("metric", "before", "after"):
        table.add_column(col)
    for key, before in record["before"].items():
        if isinstance(before, float):
            table.add_row(key, _fmt(before), _fmt(record["after"].get(key)))
    console.print(table)
    console.print(f"written: {path}")


@app.command()
@friendly_errors
def demo(
    name: Annotated[
        str | None,
        typer.Argument(help="which demo (default: the one make demo runs); an unknown name lists the known ones"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="runs folder for the demo (default: runs/demo, or runs/demo_NAME)")
    ] = None,
    quick: Annotated[bool, typer.Option(help="a much smaller run (seconds), for smoke tests")] = False,
) -> None:
    """A walkthrough in one command: without NAME, a clean and a tape-backdoored gaze model, their reports,
    and the four-corner GIF; with NAME, that task's demo (backdoorlab.experiments.demos)."""
    from backdoorlab.experiments.demo import run_demo

    run_demo(name, out, quick=quick, console=console)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, _fmt(v))
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
