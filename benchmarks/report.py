"""Turn a run's results into ``latest.md``, ``latest.json`` and ``latest.png``.

``python benchmarks/report.py results/latest.json`` re-renders the markdown
(and the plot) from a saved JSON file; ``python benchmarks/report.py
--compare BEFORE.json AFTER.json`` prints our figures of two runs side by
side (for before/after records).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
from typing import Any

#: Column order of the peers.
#: ``disk`` is no server: the disk's own limit (the C-STORE files written
#: and fsynced one by one by a plain loop), next to C-STORE on 1 association.
PEERS = ("ours", "pynetdicom", "dcmqrscp", "storescp", "orthanc", "disk")
LABELS = {"ours": "dicomtwist", "pynetdicom": "pynetdicom qrscp", "dcmqrscp": "dcmqrscp",
          "storescp": "storescp", "orthanc": "Orthanc", "disk": "disk limit"}
#: Memory figures (RSS) are compared against Orthanc's too, lower is better.
MEMORY_TARGETS = {"idle_rss": 200.0, "large_growth": 100.0}


def fmt(value: float | None) -> str:
    """Three significant figures, no exponent for ordinary sizes."""
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def times(r: float) -> str:
    """A ratio: ``2.40×``, ``∞×``."""
    return "∞×" if math.isinf(r) else f"{r:.2f}×"


def stats(values: list[float]) -> tuple[float, float, float] | None:
    """``(median, min, max)`` or None."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def ratio(measure: dict, peer: str) -> float | None:
    """How many times better ours is than ``peer`` (>1: ours better)."""
    ours = stats(measure["values"].get("ours", []))
    theirs = stats(measure["values"].get(peer, []))
    if not ours or not theirs:
        return None
    mine, other = ours[0], theirs[0]
    if not measure["higher_is_better"]:
        mine, other = other, mine
    if other <= 0:
        # A cost of zero (memory growth) against a positive one: unboundedly better.
        return math.inf if mine > 0 else None
    return mine / other


def cell(measure: dict, peer: str) -> str:
    """``median (min–max)`` of one peer, or a dash."""
    s = stats(measure["values"].get(peer, []))
    if s is None:
        return "–"
    med, lo, hi = s
    if len(measure["values"][peer]) == 1 or fmt(lo) == fmt(hi):
        return fmt(med)
    return f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def _median(results: dict, key: str, peer: str) -> float | None:
    m = results["measures"].get(key)
    s = stats(m["values"].get(peer, [])) if m else None
    return s[0] if s else None


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 6's targets: ``(target, measured, met)`` (met None: not measured)."""
    rows: list[tuple[str, str, bool | None]] = []
    measures = results["measures"]

    def vs(key: str, peer: str, factor: float, what: str) -> None:
        m = measures.get(key)
        r = ratio(m, peer) if m else None
        target = f"{what} ≥ {factor:g}× {LABELS[peer]}"
        if r is None:
            rows.append((target, "not measured", None))
        else:
            rows.append((target, f"{times(r)}", r >= factor))

    vs("assoc_1", "pynetdicom", 100, "Associations/s, 1 client")
    vs("assoc_1", "dcmqrscp", 4, "Associations/s, 1 client")
    vs("assoc_4", "pynetdicom", 100, "Associations/s, 4 clients")
    vs("assoc_4", "dcmqrscp", 4, "Associations/s, 4 clients")
    vs("store_1", "pynetdicom", 8, "C-STORE 0.5 MB (fsync), 1 association")
    vs("store_1", "dcmqrscp", 1.4, "C-STORE 0.5 MB (fsync), 1 association")
    vs("store_1", "disk", 0.8, "C-STORE 0.5 MB (fsync), 1 association")
    store16 = measures.get("store_16")
    if store16 and store16["values"].get("ours"):
        notes = store16["notes"].get("ours", [])
        rows.append(("16 concurrent C-STORE associations: no rejection or failure",
                     "; ".join(notes) or "none", not notes))
    else:
        rows.append(("16 concurrent C-STORE associations: no rejection or failure",
                     "not measured", None))
    big = _median(results, "find_patientid", "ours")
    base = _median(results, "find_baseline", "ours")
    scale = results["meta"].get("scale", {}).get("bulk", "?")
    target = f"C-FIND by PatientID on the {scale:,}-instance index ≤ 1.5× the 1-study index" \
        if isinstance(scale, int) else "C-FIND by PatientID ≤ 1.5× the 1-study index"
    if big and base:
        rows.append((target, f"{big / base:.2f}× ({fmt(big)} vs {fmt(base)} ms)",
                     big / base <= 1.5))
    else:
        rows.append((target, "not measured", None))
    vs("find_all", "pynetdicom", 20, "C-FIND all studies")
    vs("move", "dcmqrscp", 1.1, "C-MOVE")
    vs("get", "dcmqrscp", 1.1, "C-GET")
    for key, limit in MEMORY_TARGETS.items():
        m = measures.get(key)
        value = _median(results, key, "ours")
        label = m["label"] if m else key
        if value is None:
            rows.append((f"{label} < {limit:g} MiB", "not measured", None))
            continue
        notes = "; ".join(m["notes"].get("ours", []))
        met = value < limit and ("store failed" not in notes)
        accepted = re.match(r"(\d+)/(\d+) accepted", notes)
        if accepted and accepted.group(1) != accepted.group(2):
            met = False  # not every association was held
        rows.append((f"{label} < {limit:g} MiB", f"{fmt(value)} MiB" + (f" ({notes})" if notes else ""),
                     met))
    if "orthanc" in results["meta"].get("peers", []):
        for key, m in measures.items():
            if key.endswith("_mb") or key == "find_baseline":
                continue
            r = ratio(m, "orthanc")
            if r is None:
                rows.append((f"≥ Orthanc: {m['label']}", "not measured", None))
            else:
                rows.append((f"≥ Orthanc: {m['label']}", times(r), r >= 1.0))
    return rows


def markdown(results: dict) -> str:
    """The whole report as markdown."""
    meta = results["meta"]
    peers = [p for p in PEERS if p in meta.get("peers", [])]
    others = [p for p in peers if p != "ours"]
    reps = meta.get("scale", {}).get("reps", "?")
    lines = [f"# Benchmark results ({meta.get('mode')} mode, {meta.get('date')})", ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines.append(f"{meta.get('cpus')} CPUs ({meta.get('machine')}, Linux {meta.get('kernel')});"
                 f" {versions}. Run time {meta.get('runtime_s', '?')} s.")
    for name, why in results.get("skipped", {}).items():
        lines.append(f"Skipped {name}: {why}.")
    lines += ["", f"Median over {reps} repetitions (min–max). Ratio columns: how many times"
              " better dicomtwist is than that peer (> 1: dicomtwist better; for times and"
              " memory, the peer's figure divided by ours).", ""]
    head = ["Measure", "unit", *(LABELS[p] for p in peers), *(f"vs {LABELS[p]}" for p in others)]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    notes = []
    for m in results["measures"].values():
        arrow = "" if m["higher_is_better"] else " ↓"
        row = [m["label"], m["unit"] + arrow, *(cell(m, p) for p in peers)]
        for p in others:
            r = ratio(m, p)
            row.append(times(r) if r is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
        for p in peers:
            for note in m["notes"].get(p, []):
                notes.append(f"- {m['label']}, {LABELS[p]}: {note}")
    lines += ["", "↓ lower is better.", ""]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    if results.get("memory"):
        servers = [p for p in peers if p != "disk"]
        lines += ["## Peak resident memory per phase (MiB)", "",
                  "Sampled from /proc every 0.1 s (VmRSS, and VmHWM of single-process"
                  " servers); for dcmqrscp, which forks per association, the PSS"
                  " (proportional set size) summed over its processes.", "",
                  "| Phase | " + " | ".join(LABELS[p] for p in servers) + " |",
                  "|---|" + "---:|" * len(servers)]
        for phase, row in results["memory"].items():
            lines.append(f"| {phase} | " + " | ".join(fmt(row.get(p)) for p in servers) + " |")
        lines.append("")
    rows = targets(results)
    lines += ["## Targets (issue 6)", "", "| Target | Measured | Met |", "|---|---|---|"]
    for target, measured, met in rows:
        mark = "–" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {mark} |")
    met_count = sum(1 for *_, met in rows if met)
    judged = sum(1 for *_, met in rows if met is not None)
    lines += ["", f"{met_count} of {judged} targets met.", ""]
    return "\n".join(lines)


def plot(results: dict, path: str) -> bool:
    """A bar chart per measure (log scale); False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    measures = [m for k, m in results["measures"].items()
                if not k.endswith("_mb") and m["values"]]
    peers = [p for p in PEERS if p in results["meta"].get("peers", [])]
    colours = {"ours": "#d62728", "pynetdicom": "#1f77b4", "dcmqrscp": "#2ca02c",
               "storescp": "#9467bd", "orthanc": "#ff7f0e", "disk": "#7f7f7f"}
    cols = 4
    rows = (len(measures) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.3 * rows), squeeze=False)
    for ax, m in zip(axes.flat, measures):
        names, meds, errs, cs = [], [], [[], []], []
        for p in peers:
            s = stats(m["values"].get(p, []))
            if s is None:
                continue
            names.append(LABELS[p])
            meds.append(s[0])
            errs[0].append(s[0] - s[1])
            errs[1].append(s[2] - s[0])
            cs.append(colours[p])
        ax.barh(range(len(names)), meds, xerr=errs, color=cs, capsize=2)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        if meds and min(meds) > 0 and max(meds) / min(meds) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        better = "higher" if m["higher_is_better"] else "lower"
        ax.set_title(f"{m['label']}\n{m['unit']}, {better} is better", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"dicomtwist vs peers ({results['meta'].get('mode')} mode,"
                 f" {results['meta'].get('date')}): median, min-max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return True


def write(results: dict, out: str, with_plot: bool = True) -> list[str]:
    """Write ``latest.json``, ``latest.md`` and (maybe) ``latest.png`` into ``out``."""
    written = []
    path = os.path.join(out, "latest.json")
    with open(path, "w") as fp:
        json.dump(results, fp, indent=1)
    written.append(path)
    path = os.path.join(out, "latest.md")
    with open(path, "w") as fp:
        fp.write(markdown(results))
    written.append(path)
    if with_plot:
        path = os.path.join(out, "latest.png")
        if plot(results, path):
            written.append(path)
        else:
            print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
    return written


def compare(before: dict, after: dict, peer: str = "ours") -> str:
    """A markdown table of one peer's medians in two runs (before / after)."""
    def source(results: dict) -> str:
        version = str(results["meta"].get("versions", {}).get("dicomtwist", "?"))
        found = re.search(r"commit \w+", version)
        return found.group(0) if found else results["meta"].get("date", "?")

    lines = [f"| Measure | unit | before ({source(before)}) | after ({source(after)}) | change |",
             "|---|---|---:|---:|---:|"]
    for key, m in after["measures"].items():
        if key.endswith("_mb"):
            continue
        old = before["measures"].get(key)
        a = stats(m["values"].get(peer, []))
        b = stats(old["values"].get(peer, [])) if old else None
        change = "–"
        if a and b and a[0] and b[0]:
            better = a[0] / b[0] if m["higher_is_better"] else b[0] / a[0]
            change = f"{better:.2f}× {'better' if better >= 1 else 'worse'}"
        lines.append(f"| {m['label']} | {m['unit']}{'' if m['higher_is_better'] else ' ↓'} |"
                     f" {fmt(b[0]) if b else '–'} | {fmt(a[0]) if a else '–'} | {change} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Re-render a saved JSON's markdown and plot next to it, or compare two runs."""
    if len(argv) == 3 and argv[0] == "--compare":
        with open(argv[1]) as fp, open(argv[2]) as fq:
            print(compare(json.load(fp), json.load(fq)))
        return 0
    if len(argv) != 1:
        print("usage: python benchmarks/report.py RESULTS.json\n"
              "       python benchmarks/report.py --compare BEFORE.json AFTER.json",
              file=sys.stderr)
        return 2
    with open(argv[0]) as fp:
        results: dict[str, Any] = json.load(fp)
    for path in write(results, os.path.dirname(os.path.abspath(argv[0]))):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
