"""Ranked table of a multirun: ``python -m eirnn.sweep_report SWEEP_DIR``.

Reads every job folder of a Hydra sweep (a folder holding ``.hydra/overrides.yaml``,
at any depth below ``SWEEP_DIR``) and prints, then writes into ``SWEEP_DIR``:

* ``sweep_report.md`` -- the completed jobs ranked by the best value of the monitored
  metric (``val/psth_corr`` unless the jobs' config says otherwise), with the best
  E / I correlations, bits/spike and epoch, the swept values, epochs trained (noting an
  early stop, or a NaN metric at the last validation: a diverged run) and training
  time; failed or unfinished jobs listed below the table with their error;
* ``sweep_report.csv`` -- one row per job (completed and failed) with the same fields,
  the job folder and the status.

Run name: the value of a ``variant`` override (``+variant=gradbal_scale_0.5``, as in
``experiment=lab_ltrial_21``), otherwise the overrides that differ between jobs.
Swept values: every override key whose value differs between jobs (``variant`` aside).
A job is *completed* when it has a ``metrics.json`` (written at the end of training);
otherwise its error is the last error line of its log (``<job>/*.log``), or it is
reported as unfinished (still running, killed or interrupted).

Exit status: 0 when a report was written (also when jobs failed), 2 for a bad
``SWEEP_DIR`` (one line on stderr naming it).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from eirnn.errors import UserError, cli_main
from eirnn.utils import fmt_num

MD_NAME = "sweep_report.md"
CSV_NAME = "sweep_report.csv"
VARIANT_KEYS = ("variant",)
METRIC_COLUMNS = (
    ("val/psth_corr_E", "E"),
    ("val/psth_corr_I", "I"),
    ("val/bits_per_spike", "bits/spike"),
)
_LOG_ERROR = re.compile(r"\]\[(ERROR|CRITICAL)\] - ")  # a logging record: [time][logger][ERROR] - msg
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")  # last line of a traceback


class SweepReportError(UserError):
    """Bad input (missing folder, no job in it): reported in one line."""


@dataclass
class Job:
    """One job folder of the sweep."""

    path: Path
    overrides: list[str]
    params: dict[str, str]
    metrics: Optional[dict[str, Any]] = None
    metric_name: str = "val/psth_corr"
    mode: str = "max"
    error: str = ""

    @property
    def completed(self) -> bool:
        return self.metrics is not None

    def best(self, key: str) -> Optional[float]:
        """Best-epoch value of ``key``; ``None`` when absent or NaN (metrics.json stores NaN as null)."""
        value = (self.metrics or {}).get("best", {}).get(key)
        if value is None:
            return None
        value = float(value)
        return None if math.isnan(value) else value

    def best_cell(self, key: str) -> Optional[float]:
        """Like :meth:`best`, but NaN (not None) when the run logged the metric and it was NaN."""
        value = self.best(key)
        if value is None and key in (self.metrics or {}).get("best", {}):
            return math.nan
        return value


def _override_key(text: str) -> tuple[str, str]:
    """``"+a.b=c"`` -> ``("a.b", "c")`` (prefixes ``+``, ``++``, ``~`` dropped)."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _job_order(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path)))


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders below ``sweep_dir`` (those with ``.hydra/overrides.yaml``), in job order."""
    found = []
    for ov in sweep_dir.rglob(".hydra/overrides.yaml"):
        job = ov.parent.parent
        if any(part.startswith(".") for part in job.relative_to(sweep_dir).parts):
            continue  # e.g. submitit's own folders
        found.append(job)
    return sorted(found, key=_job_order)


def _last_error(job_dir: Path) -> str:
    """Last error of the job's logs (``*.log`` in the job folder): an ``[ERROR]`` log record
    or the ``SomeError: message`` line that ends a traceback; ``""`` when there is none."""
    found = ""
    for log_file in sorted(job_dir.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            record = _LOG_ERROR.search(line)
            if record:
                found = line[record.end():].strip()
            elif _EXC_LINE.match(line):
                found = line.strip()
    return found


def load_job(job_dir: Path) -> Job:
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    overrides = [str(o) for o in overrides]
    params = dict(_override_key(o) for o in overrides)
    job = Job(path=job_dir, overrides=overrides, params=params)
    cfg_path = job_dir / ".hydra" / "config.yaml"
    if cfg_path.exists():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
        job.metric_name = str(cfg.get("optimized_metric") or job.metric_name)
        job.mode = str(cfg.get("optimized_mode") or job.mode)
    metrics_path = job_dir / "metrics.json"
    if metrics_path.exists():
        try:
            job.metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            job.error = f"unreadable metrics.json: {err}"
    if not job.completed and not job.error:
        job.error = _last_error(job_dir) or "no metrics.json and no error in the log (still running, killed or interrupted)"
    return job


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (missing counts as a value), in first-seen order."""
    keys: dict[str, None] = {}
    for job in jobs:
        for key in job.params:
            keys.setdefault(key, None)
    out = []
    for key in keys:
        values = {job.params.get(key) for job in jobs}
        if len(values) > 1:
            out.append(key)
    return out


def _compact(value: str) -> str:
    """Long floats (Optuna's samples) to 4 significant digits; anything else unchanged."""
    if re.fullmatch(r"[-+]?\d*\.\d{5,}(e[-+]?\d+)?", value, flags=re.I):
        return f"{float(value):.4g}"
    return value


def run_name(job: Job, swept: list[str]) -> str:
    """The ``variant`` override's value, else the job's swept overrides, else the folder name."""
    for key in VARIANT_KEYS:
        if key in job.params:
            return job.params[key]
    parts = [f"{k}={_compact(job.params[k])}" for k in swept if k in job.params]
    return " ".join(parts) if parts else job.path.name


def rank_jobs(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """Completed jobs best first (a missing/NaN metric last), and the failed ones in job order."""
    done = [j for j in jobs if j.completed]
    failed = [j for j in jobs if not j.completed]

    def key(job: Job):
        v = job.best(job.metric_name)
        if v is None:
            return (1, 0.0)
        return (0, -v if job.mode == "max" else v)

    return sorted(done, key=key), failed


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def build_rows(jobs: list[Job]) -> tuple[list[str], list[dict[str, Any]], list[Job], list[Job], list[str]]:
    swept = [k for k in swept_keys(jobs) if k not in VARIANT_KEYS]
    ranked, failed = rank_jobs(jobs)
    metric = ranked[0].metric_name if ranked else (jobs[0].metric_name if jobs else "val/psth_corr")
    rows = []
    for rank, job in enumerate(ranked, 1):
        m = job.metrics or {}
        row = {
            "rank": rank, "status": "completed", "run": run_name(job, swept),
            metric: job.best_cell(metric),
        }
        for key, _ in METRIC_COLUMNS:
            if key != metric:
                row[key] = job.best_cell(key)
        best_ep = m.get("best", {}).get("epoch")  # metrics.json: 0-based index; shown counted from 1
        row["best_epoch"] = None if best_ep is None else int(best_ep) + 1
        for key in swept:
            row[key] = job.params.get(key, "")
        final = m.get("final", {})
        note = ""
        if m.get("outcome") == "diverged":  # metrics.json's own verdict (eirnn.train, issue 19)
            note = f"diverged: {m.get('reason', '')}"
        elif metric in final and final[metric] is None:  # NaN at the last validation: the run diverged
            note = f"NaN at epoch {int(final['epoch']) + 1}" if final.get("epoch") is not None else "NaN"
        elif m.get("early_stopped"):
            note = "early stop"
        row.update(epochs_trained=m.get("epochs_trained"), early_stopped=m.get("early_stopped"), note=note,
                   train_time_s=m.get("train_time_s"), error="", job_dir=str(job.path))
        rows.append(row)
    for job in failed:
        row = {"rank": "", "status": "failed", "run": run_name(job, swept), metric: None}
        for key, _ in METRIC_COLUMNS:
            if key != metric:
                row[key] = None
        row["best_epoch"] = None
        for key in swept:
            row[key] = job.params.get(key, "")
        row.update(epochs_trained=None, early_stopped=None, note="", train_time_s=None, error=job.error,
                   job_dir=str(job.path))
        rows.append(row)
    header = list(rows[0].keys()) if rows else []
    return header, rows, ranked, failed, swept


def render_markdown(sweep_dir: Path, jobs: list[Job]) -> str:
    header, rows, ranked, failed, swept = build_rows(jobs)
    metric = ranked[0].metric_name if ranked else "val/psth_corr"
    lines = [f"# Sweep report: `{sweep_dir}`", ""]
    lines.append(f"{len(jobs)} jobs: {len(ranked)} completed, {len(failed)} failed or unfinished. "
                 f"Ranked by best `{metric}` ({ranked[0].mode if ranked else 'max'}).")
    common = [o for o in (jobs[0].overrides if jobs else []) if _override_key(o)[0] not in swept + list(VARIANT_KEYS)]
    if common:
        lines.append("Common overrides: `" + " ".join(common) + "`")
    lines.append("")
    cols = ["rank", "run", f"best {metric}"] + [label for key, label in METRIC_COLUMNS if key != metric]
    cols += ["best epoch"] + swept + ["epochs", "time"]
    lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        if row["status"] != "completed":
            continue
        cells = [str(row["rank"]), f"`{row['run']}`", fmt_num(row[metric], nan="NaN")]
        cells += [fmt_num(row[key], nan="NaN") for key, _ in METRIC_COLUMNS if key != metric]
        cells.append("" if row["best_epoch"] is None else str(row["best_epoch"]))
        cells += [_compact(str(row[k])) for k in swept]
        note = f" ({row['note']})" if row["note"] else ""
        cells += [f"{row['epochs_trained']}{note}", _fmt_time(row["train_time_s"])]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if failed:
        lines += ["", f"Failed or unfinished jobs ({len(failed)}):", ""]
        for row in rows:
            if row["status"] == "completed":
                continue
            lines.append(f"- `{row['run']}` ({row['job_dir']}): {row['error']}")
    optuna = sweep_dir / "optimization_results.yaml"
    if optuna.exists():
        res = yaml.safe_load(optuna.read_text()) or {}
        if "best_params" in res:
            params = " ".join(f"{k}={v}" for k, v in res["best_params"].items())
            lines += ["", f"Optuna best value {res.get('best_value')}: `{params}`"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, jobs: list[Job]) -> None:
    header, rows, *_ = build_rows(jobs)
    from eirnn.utils import atomic_write

    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})

    atomic_write(path, write, mode="w")


def report(sweep_dir: str | Path) -> tuple[str, Path, Path]:
    """Write ``sweep_report.md`` / ``.csv`` into ``sweep_dir``; returns ``(markdown, md_path, csv_path)``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SweepReportError(f"{sweep_dir}: no such folder")
    if not sweep_dir.is_dir():
        raise SweepReportError(f"{sweep_dir}: not a folder")
    paths = find_jobs(sweep_dir)
    if not paths:
        raise SweepReportError(f"{sweep_dir}: no job folders (none holds .hydra/overrides.yaml)")
    jobs = [load_job(p) for p in paths]
    text = render_markdown(sweep_dir, jobs)
    md_path, csv_path = sweep_dir / MD_NAME, sweep_dir / CSV_NAME
    from eirnn.utils import write_text_atomic

    write_text_atomic(md_path, text)
    write_csv(csv_path, jobs)
    return text, md_path, csv_path


@cli_main  # SweepReportError, DiskFullError, ...: one line, status 2
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eirnn.sweep_report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. outputs/lab_ltrial_21/multiruns/<date_time>")
    args = parser.parse_args(argv)
    text, md_path, csv_path = report(args.sweep_dir)
    print(text, end="")
    print(f"written: {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
