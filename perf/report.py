"""Results as JSON, a Markdown table of ratios to the direct path, and a PNG chart.

Before: per-scenario medians from `run.summarize`. After: files in the results folder. A ratio
is scenario ÷ direct, so for latency above 1 is worse and for throughput below 1 is worse;
"added" latency is scenario − direct in µs.
"""

from __future__ import annotations

import json
from pathlib import Path

from perf.run import METRICS

BASELINE = "direct"


def markdown(summary: dict[str, dict[str, float]], *, meta: dict) -> str:
    base = summary.get(BASELINE, {})
    lines = [f"Run: {meta.get('when', '')} · {meta.get('repeat')} repetitions × "
             f"{meta.get('duration')} s per measurement · medians · ratio = scenario ÷ direct",
             "",
             "| scenario | p50 µs | ×direct | added µs | p99 µs | ×direct | req/s 64c | ×direct "
             "| new conn/s | ×direct | bulk Gbit/s | ×direct | RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in summary.items():
        def ratio(k: str, m=m) -> str:
            return f"{m[k] / base[k]:.2f}" if base.get(k) and k in m else "–"

        added = m.get("p50_us", 0) - base.get("p50_us", 0)
        rss = f"{m['rss_mb']:.1f}" if "rss_mb" in m else "–"
        lines.append(
            f"| {name} | {m.get('p50_us', 0):.0f} | {ratio('p50_us')} | {added:+.0f} | "
            f"{m.get('p99_us', 0):.0f} | {ratio('p99_us')} | {m.get('rps_64', 0):.0f} | "
            f"{ratio('rps_64')} | {m.get('conn_rate', 0):.0f} | {ratio('conn_rate')} | "
            f"{m.get('bulk_gbps', 0):.2f} | {ratio('bulk_gbps')} | {rss} |")
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = summary.get(BASELINE, {})
    keys = [k for k in ("rps_64", "conn_rate", "bulk_gbps", "p50_us", "p99_us") if base.get(k)]
    names = list(summary)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [summary[name].get(k, 0) / base[k] for k in keys]
        bars = ax.bar([x + i * width for x in range(len(keys))], vals, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([METRICS[k][0] for k in keys], fontsize=8, rotation=12)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("ratio to direct (throughput: higher is better; latency: lower)")
    ax.set_title("Lacewing perf: scenarios relative to the direct path")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(folder: Path, *, samples: list[dict], summary: dict, meta: dict) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "markdown": folder / "report.md",
             "chart": folder / "chart.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "summary": summary, "samples": samples},
                                        indent=2) + "\n")
    paths["markdown"].write_text(markdown(summary, meta=meta))
    chart(summary, paths["chart"])
    return paths
