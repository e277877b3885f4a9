"""The fleet report: per-bag rows (worst first), per-vehicle and fleet totals, every event, an HTML page.

Files under ``OUT``: ``bags.csv``, ``vehicles.csv``, ``events.csv`` / ``events.json`` (one row per event with the
``flow-anomaly bag play BAG --start T`` command to review it), ``summary.json`` (everything) and ``report.html``
with PNG plots (matplotlib) beside it. Written atomically, so a reader never sees half a report.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BAG_COLUMNS = (
    "vehicle", "drive", "path", "status", "labelled", "duration_s", "distance_km",
    "ts_alarm_events", "ts_alarms_per_hour", "ts_alarms_per_km", "cam_alarm_events", "cam_alarms_per_hour",
    "data_quality_events", "ts_f1", "ts_event_recall", "cam_ap", "error",
)  # fmt: skip
EVENT_COLUMNS = (
    "vehicle", "drive", "path", "source", "kind", "start_s", "end_s", "start_offset_s", "peak_score",
    "threshold", "top_signals", "status", "reason", "play",
)  # fmt: skip


def _n_events(r: dict[str, Any], source: str, kind: str = "alarm") -> int:
    return sum(1 for e in r.get("events", ()) if e["source"] == source and e["kind"] == kind)


def bag_row(r: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a bag's result (the CSV / HTML table)."""
    row = {k: r.get(k) for k in ("vehicle", "drive", "path", "status", "labelled", "duration_s", "distance_km")}
    row["error"] = r.get("error", "")
    if r.get("status") != "ok":
        return row
    ts, cam = r.get("timeseries", {}), r.get("camera") or {}
    row.update(
        ts_alarm_events=_n_events(r, "timeseries"),
        ts_alarms_per_hour=ts.get("alarms_per_hour"),
        ts_alarms_per_km=ts.get("alarms_per_km"),
        cam_alarm_events=cam.get("alarm_events"),
        cam_alarms_per_hour=cam.get("alarms_per_hour"),
        data_quality_events=_n_events(r, "timeseries", "data_quality"),
    )
    metrics = r.get("metrics") or {}
    det = (metrics.get("timeseries") or {}).get(metrics.get("deployed_detector"), {})
    cam = metrics.get("camera") or {}
    row.update(ts_f1=det.get("f1"), ts_event_recall=det.get("event_recall"), cam_ap=cam.get("ap"))
    return row


def _badness(r: dict[str, Any]) -> tuple:
    """Sort key, worst first: errors, then time-series + camera alarms per hour."""
    if r.get("status") != "ok":
        return (0, 0.0)
    cam = r.get("camera") or {}
    rate = (r.get("timeseries", {}).get("alarms_per_hour") or 0.0) + (cam.get("alarms_per_hour") or 0.0)
    return (1, -rate)


def totals(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over bags and the rates they give (events per hour / km over the summed time / distance)."""
    ok = [r for r in results if r.get("status") == "ok"]
    hours = sum(r["duration_s"] for r in ok) / 3600.0
    with_km = [r for r in ok if r.get("distance_km")]
    km = sum(r["distance_km"] for r in with_km)
    ts_events = sum(_n_events(r, "timeseries") for r in ok)
    ts_events_km = sum(_n_events(r, "timeseries") for r in with_km)
    cam_bags = [r for r in ok if (r.get("camera") or {}).get("frames") is not None]
    cam_events = sum(r["camera"]["alarm_events"] for r in cam_bags)
    status_s: dict[str, float] = defaultdict(float)
    for r in ok:
        for k, v in r["timeseries"].get("status_time_s", {}).items():
            status_s[k] += v
    return {
        "bags": len(results),
        "failed": len(results) - len(ok),
        "labelled": sum(bool(r.get("labelled")) for r in ok),
        "hours": hours,
        "km": km if with_km else None,
        "ts_alarm_events": ts_events,
        "ts_alarms_per_hour": ts_events / hours if hours else None,
        "ts_alarms_per_km": ts_events_km / km if km else None,
        "cam_alarm_events": cam_events if cam_bags else None,
        "cam_alarms_per_hour": cam_events / (sum(r["duration_s"] for r in cam_bags) / 3600.0) if cam_bags else None,
        "data_quality_events": sum(_n_events(r, "timeseries", "data_quality") for r in ok),
        "status_time_s": dict(sorted(status_s.items())),
    }


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-bag rows (worst first), per-vehicle totals, fleet totals and every event (JSON-ready)."""
    ordered = sorted(results, key=_badness)
    by_vehicle: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_vehicle[r.get("vehicle", "unknown")].append(r)
    events = []
    for r in ordered:
        for e in r.get("events", ()):
            events.append({"vehicle": r["vehicle"], "drive": r["drive"], "path": r["path"], **e})
    return {
        "bags": [bag_row(r) for r in ordered],
        "vehicles": {v: totals(rs) for v, rs in sorted(by_vehicle.items())},
        "fleet": totals(results),
        "events": events,
        "metrics": {r["path"]: r["metrics"] for r in ordered if r.get("metrics")},
    }


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------
def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    return buf.getvalue().encode()


def _plots(agg: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flow_anomaly_ros.model_store import atomic_write_bytes

    rows = [b for b in agg["bags"] if b["status"] == "ok"][:40]
    names: list[str] = []
    if not rows:
        return names
    labels = [f"{b['vehicle']}/{b['drive']}" for b in rows]
    height = 1.2 + 0.28 * len(rows)

    fig, ax = plt.subplots(figsize=(8, height))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [b["ts_alarms_per_hour"] or 0 for b in rows], 0.4, label="time series")
    ax.barh([i + 0.2 for i in y], [b["cam_alarms_per_hour"] or 0 for b in rows], 0.4, label="camera")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("alarm events per hour")
    ax.set_title("Alarms per hour, worst bags first")
    ax.legend(fontsize=7)
    names.append(_save(fig, out, "alarms_per_hour.png", plt, atomic_write_bytes))

    results = {r["path"]: r for r in agg.get("_results", [])}
    statuses = sorted({k for r in results.values() for k in r.get("timeseries", {}).get("status_time_s", {})})
    if statuses:
        fig, ax = plt.subplots(figsize=(8, height))
        left = [0.0] * len(rows)
        for s in statuses:
            vals = [_status_share(results[b["path"]], s) for b in rows]
            ax.barh(list(y), vals, left=left, label=s)
            left = [a + v for a, v in zip(left, vals, strict=True)]
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("share of the bag's windows")
        ax.set_title("Time in each window status")
        ax.legend(fontsize=7)
        names.append(_save(fig, out, "status_time.png", plt, atomic_write_bytes))
    return names


def _status_share(r: dict[str, Any], status: str) -> float:
    return r["timeseries"]["status_time_s"].get(status, 0.0) / max(r["duration_s"], 1e-9)


def _save(fig: Any, out: Path, name: str, plt: Any, write: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write(out / name, buf.getvalue())
    return name


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], limit: int = 2000) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return html.escape(", ".join(map(str, v)))
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows[:limit])
    more = f"<p>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>\n{body}</table>{more}"


def write_report(results: Sequence[dict[str, Any]], out: str | Path, run: dict[str, Any] | None = None) -> Path:
    """Write every report file under ``out``; returns the HTML page's path."""
    from flow_anomaly_ros.fleet.bag_eval import clean_json
    from flow_anomaly_ros.model_store import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    agg = clean_json(aggregate(results))
    vehicles = [{"vehicle": v, **t} for v, t in agg["vehicles"].items()]
    atomic_write_bytes(out / "bags.csv", _csv(agg["bags"], BAG_COLUMNS))
    veh_cols = ("vehicle", *(k for k in agg["fleet"] if k != "status_time_s"))
    atomic_write_bytes(out / "vehicles.csv", _csv([*vehicles, {"vehicle": "FLEET", **agg["fleet"]}], veh_cols))
    atomic_write_bytes(out / "events.csv", _csv(agg["events"], EVENT_COLUMNS))
    atomic_write_json(out / "events.json", agg["events"])
    atomic_write_json(out / "summary.json", {**agg, "run": clean_json(run or {})})
    plots = _plots({**agg, "_results": list(results)}, out)
    metric_rows = []
    for path, m in agg["metrics"].items():
        for det, d in (m.get("timeseries") or {}).items():
            metric_rows.append({"bag": path, "model": f"time series {det}", **_scalars(d)})
        if m.get("camera"):
            metric_rows.append({"bag": path, "model": "camera", **_scalars(m["camera"])})
    metric_cols = list(dict.fromkeys(k for r in metric_rows for k in r))
    fleet = agg["fleet"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Fleet evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:12px;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}th{{background:#eee}}code{{font-size:11px}}</style>
</head><body><h1>Fleet evaluation</h1>
<p>{fleet["bags"]} bags ({fleet["failed"]} failed, {fleet["labelled"]} labelled), {fleet["hours"] or 0:.3g} h,
time-series alarms per hour {_fmt(fleet["ts_alarms_per_hour"])}, camera alarms per hour
{_fmt(fleet["cam_alarms_per_hour"])}. Files: bags.csv, vehicles.csv, events.csv, events.json, summary.json.</p>
<h2>Fleet and vehicles</h2>{_table([*vehicles, {"vehicle": "FLEET", **fleet}], veh_cols)}
<h2>Bags, worst first</h2>{_table(agg["bags"], BAG_COLUMNS)}
{"".join(f'<p><img src="{p}" alt="{p}"></p>' for p in plots)}
<h2>Metrics of the labelled bags</h2>{_table(metric_rows, metric_cols) if metric_rows else "<p>none</p>"}
<h2>Events (review with the play command)</h2>{_table(agg["events"], EVENT_COLUMNS)}
</body></html>
"""
    atomic_write_bytes(out / "report.html", page.encode())
    return out / "report.html"


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
