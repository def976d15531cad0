"""The run's results three ways: a table on the terminal, docs/benchmarks.md, and docs/benchmarks.png."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.results import Row, Target

METHOD = """\
- **Same run, same machine, one server under load at a time.** Each workload starts fresh servers and
  kills their whole process groups when done. The machine may be shared with other work: the load-average
  row says how busy it was. Single numbers (concurrency 1 most of all) varied by up to 2× between runs on
  a busy 2-core box, so read the ratios of one run, not numbers across runs.
- **W1 alternates.** Both servers are up (the one not under load idles); each concurrency runs in rounds of
  2 s, ours then the baseline's, and each side's median round is reported. A burst of other work on the
  machine then costs one round of one side, not the whole of one side's measurement.
- **Ours:** `mme serve` (one process: uvicorn + httptools + uvloop, raw ASGI, each response in one write).
- **Baseline (first peer), MMS:** multi-model-server + sagemaker-inference in their own virtualenv
  (`bench/.work/baseline-venv`), started through `sagemaker_inference.model_server.start_model_server`
  with `SAGEMAKER_MULTI_MODEL=true` and an XGBoost `DefaultInferenceHandler` and
  `HandlerService(DefaultHandlerService)` written the way AWS's bring-your-own-container multi-model
  example writes them (`bench/baseline/`), outside Docker with the machine's Java. It parses CSV with
  numpy: `sagemaker_inference.decoder` fails on the one-row CSV that MMS hands it.
- **Second peer, MLServer:** Seldon MLServer and mlserver-xgboost in their own virtualenv
  (`bench/.work/mlserver-venv`, `uvloop<0.22`: 0.22 kills its workers at start, MLServer issue #2286),
  with its fastest settings here: `parallel_workers=0` and `OMP_NUM_THREADS=1`. The bench writes its
  `settings.json` and a `model-settings.json` (`mlserver_xgboost.XGBoostModel`) over a link to the same
  model file (`model.ubj`) under `bench/.work/mlserver`. Its rows (peer "MLServer") put our V2 route
  against its own: both get the same `POST /v2/models/{name}/infer` body, one FP32 tensor. W1 and W4
  use one model loaded at startup; the W1 rounds alternate over all four: ours, MMS, ours over V2,
  MLServer. W2's first load and W3 start it with `load_models_at_startup` false over the W2 or W3
  names and load each through its repository API (`POST /v2/repository/models/{name}/load`) plus a
  first infer; its W3 fill stops at 1,000 models or 300 s, whichever comes first.
- **Models:** one 25-tree city model (`mme train --locations Chicago_IL`, 4 seeds) under 10,000 names:
  `NAME/xgboost-model` folders for `POST /models`, `NAME.tar.gz` for the local endpoint. The first 40
  names are copies with bytes of their own (an attribute each): W2 and the in-process loads compile
  new bytes every time. The rest are hard links of the 4 seeds, whose forms our compiler writes
  without compiling them again (W3's load times, W5's first pass).
- **Load:** W1 and the floors use the load generator named above (wrk: a Lua script sends the POST body and
  headers, its `done()` hook prints wrk's own percentiles). In W5 our side runs under wrk too, the Lua
  script following the Zipf trace (thread k of T sends entries k, k+T, ...); the baseline needs a
  decision per request (the platform's load/unload), so it uses the bench's asyncio HTTP/1.1 client.
  W2-W4 are sequential single requests; W4's alternate between the servers, one call each per round.
- **Model loads** are timed in the bench's own process, one at a time, as the local endpoint does them:
  a first load unpacks a `.tar.gz` and compiles (read, walker, check against XGBoost, write the compiled
  form); a re-miss reads the compiled form back. **Hits during a load storm:** wrk sends one hot model's
  requests (concurrency 4), alone and then while four client threads invoke other models in turn
  through a cache of 8, so that every one of theirs is a miss.
- **Memory** is the PSS of every process in the server's session (MMS's Java frontend and its per-model
  Python workers included): shared pages are counted once, unlike summed RSS.
- **W3 baseline:** MMS starts a Python worker per model; it stops at its cap of models or when the machine
  has < 4 GiB available, and the scale it reached is reported.
- **W5:** Zipf (s=1.1) over the source's models, concurrency 16, starting cold. Ours: the local endpoint
  (`--models FOLDER --max-models N --memory-budget N×model size`), hit ratio from its /metrics counters.
  Baseline: SageMaker's part is emulated by the bench (`bench/mme_platform.py`: load on a miss, DELETE the
  LRU model when full or on 507) at the largest scale it survives. Each side's hit ratio is compared with
  an exact LRU simulation of the requests it was sent. "Above idle" is peak PSS minus the server's PSS
  before traffic: what the models and their traffic cost, which is what the budget bounds.
"""


PEERS = "MMS (multi-model-server + sagemaker-inference, AWS's image stack) and MLServer"
COLUMNS = ("workload", "metric", "unit", "ours", "peer", "peer's", "ours vs peer", "note")


def _cells(row: Row) -> list[str]:
    peer = row.peer if row.baseline is not None else ""
    return [
        row.workload,
        row.metric,
        row.unit,
        fmt(row.ours),
        peer,
        fmt(row.baseline),
        ratio_text(row),
        row.note,
    ]


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio_text(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return ""
    return f"{ratio:.1f}× better" if ratio >= 1 else f"{1 / ratio:.1f}× worse"


def met_text(target: Target) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[target.met]


def print_table(rows: list[Row], targets: list[Target], limits: list[str]) -> None:
    console = Console(width=160)
    table = Table(title=f"xgboost-mme vs {PEERS}")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("ours", "peer's") else "left")
    for row in rows:
        table.add_row(*_cells(row))
    console.print(table)
    checks = Table(title="Targets")
    for column in ("target", "goal", "result", "", "margin"):
        checks.add_column(column)
    for target in targets:
        style = {True: "green", False: "bold red", None: "yellow"}[target.met]
        checks.add_row(target.name, target.goal, target.actual, f"[{style}]{met_text(target)}", target.margin)
    console.print(checks)
    for line in limits:
        console.print(line)


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def write_markdown(
    path: Path, machine: dict[str, str], rows: list[Row], targets: list[Target], limits: list[str], chart: str
) -> None:
    missed = [t.name for t in targets if t.met is False]
    verdict = f"**Missed: {', '.join(missed)}.**" if missed else "Every measured target was met."
    parts = [
        "# Benchmarks",
        f"Written by `{machine['command']}` on {machine['date']}; regenerate, don't edit. {verdict}",
        "## Machine",
        _md_table(["", ""], [[k, v] for k, v in machine.items()]),
        "## Targets",
        _md_table(
            ["target", "goal", "result", "met?", "margin"],
            [[t.name, t.goal, t.actual, met_text(t), t.margin] for t in targets],
        ),
        "## Results",
        _md_table(list(COLUMNS), [_cells(r) for r in rows]),
        f"![ours vs each peer per workload]({chart})",
        "## How close to the limit",
        "\n".join(f"- {line}" for line in limits) or "Not measured in this run.",
        "## How it was measured",
        METHOD,
    ]
    path.write_text("\n\n".join(parts).rstrip() + "\n")


def write_chart(path: Path, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Only rows whose two sides are like for like: a bar pair at different scales would mislead.
    paired = [r for r in rows if r.ratio is not None and r.unit not in ("count", "%")]
    groups = [
        (title, group)
        for title, group in (
            ("higher is better", [r for r in paired if r.higher_is_better]),
            ("lower is better", [r for r in paired if not r.higher_is_better]),
        )
        if group
    ]
    if not groups:  # no baseline in this run (--no-baseline): nothing to pair
        return
    heights = [len(group) for _, group in groups]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(11, 0.55 * sum(heights) + 2), height_ratios=heights, squeeze=False
    )
    for ax, (title, group) in zip(axes[:, 0], groups, strict=True):
        ys = range(len(group))
        for offset, side, values in (
            (-0.2, "ours (xgboost-mme)", [r.ours for r in group]),
            (0.2, "peer (MMS + sagemaker-inference, or MLServer)", [r.baseline for r in group]),
        ):
            bars = ax.barh([y + offset for y in ys], values, height=0.4, label=side)
            ax.bar_label(bars, [fmt(v) for v in values], padding=3, fontsize=7)
        labels = [f"{r.workload}: {r.metric} ({r.unit}) vs {r.peer}" for r in group]
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.margins(x=0.15)
        ax.set_title(f"{title} (log scale)", fontsize=10)
        ax.grid(axis="x", which="major", alpha=0.3)
    fig.suptitle("xgboost-mme vs its peers, MMS and MLServer: same machine, same run")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.95))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
