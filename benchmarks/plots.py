"""Plots of a results file (matplotlib, the ``bench`` extra): pictures only, no measuring.

- ``<stem>-throughput.png``: one panel per scenario, a bar per figure (the
  peers in the ``peers`` panel beside our engine);
- ``<stem>-latency.png``: latency percentile curves, p50 ... p99.99 on a
  log scale, one panel per latency unit;
- ``summary`` (``write_summary``): the README's picture, the peers' bars and
  our engine's latency curves per flow.
"""
from __future__ import annotations

from pathlib import Path

OURS = "#1f6feb"
PEER = "#9a9a9a"
OTHER = "#57a773"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plots(doc: dict, folder: Path, stem: str) -> list[Path]:
    """Write the throughput and latency plots of ``doc`` into ``folder``."""
    out = [folder / f"{stem}-throughput.png", folder / f"{stem}-latency.png"]
    throughput(doc, out[0])
    latency(doc, out[1])
    return out


def _title(doc: dict) -> str:
    m, s = doc["machine"], doc["software"]
    return (f"exchange-core {s.get('git_commit', '')[:10] if s.get('git_commit') else ''} "
            f"({doc['set']} set) on {m['cores']} × {m['cpu_model']}, Python {s['python']}")


def _bar_colour(fig_id: str) -> str:
    if fig_id.startswith("peers."):
        return OURS if fig_id.startswith("peers.exchange-core") else PEER
    return OTHER


def _barh(ax, figures, title: str) -> None:
    labels = [f["label"] for f in figures][::-1]
    values = [f["value"] for f in figures][::-1]
    ax.barh(range(len(values)), values, color=[_bar_colour(f["id"]) for f in figures][::-1])
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    units = sorted({f["unit"] for f in figures})
    ax.set_title(f"{title} ({', '.join(units)})", fontsize=9, loc="left")
    ax.tick_params(axis="x", labelsize=7)
    ax.xaxis.set_major_formatter(_formatter())
    top = max(values) if values else 1
    for y, v in enumerate(values):
        ax.text(v + top * 0.01, y, _si(v), va="center", fontsize=6)
    ax.set_xlim(0, top * 1.25)


def _si(v: float, _pos=None) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def _formatter():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(_si)


def _is_load(fig: dict) -> bool:
    """A latency figure whose value is the load it ran at, not a throughput."""
    return fig["unit"].endswith(("offered", "achieved"))


def throughput(doc: dict, path: Path) -> None:
    plt = _pyplot()
    panels = [(name, e["figures"]) for name, e in doc["scenarios"].items()
              if e["status"] == "ok" and e["figures"]]
    panels = [(name, [f for f in figs if not _is_load(f)]) for name, figs in panels]
    panels = [(name, figs) for name, figs in panels if figs]
    if not panels:
        panels = [("no figures", [])]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    heights = [max(len(figs) for figs in (p[1] for p in panels[r * cols:(r + 1) * cols])) for r in
               range(rows)]
    fig, axes = plt.subplots(rows, cols, figsize=(14, 0.9 + sum(0.28 * h + 0.7 for h in heights)),
                             gridspec_kw={"height_ratios": [h + 2 for h in heights]}, squeeze=False)
    for ax, (name, figs) in zip(axes.flat, panels):
        _barh(ax, figs, name)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(_title(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curves(doc: dict, prefix: str = ""):
    """{latency unit: [(label, [percentile], [value])]} of the figures with a curve."""
    groups: dict[str, list] = {}
    for entry in doc["scenarios"].values():
        if entry["status"] != "ok":
            continue
        for f in entry["figures"]:
            lat = f.get("latency")
            if not lat or len(lat["percentiles"]) < 4 or not f["id"].startswith(prefix):
                continue
            ps = [float(p) for p in lat["percentiles"]]
            groups.setdefault(lat["unit"], []).append((f["label"], ps, list(lat["percentiles"].values())))
    return groups


def _plot_curves(ax, curves, unit: str) -> None:
    import math
    for label, ps, vs in curves:
        xs = [-math.log10(1 - p / 100) for p in ps]      # p50 -> 0.3, p99.99 -> 4
        ax.plot(xs, vs, marker="o", markersize=3, label=label, linewidth=1.2)
    ticks = sorted({p for _, ps, _ in curves for p in ps})
    ax.set_xticks([-math.log10(1 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")


def latency(doc: dict, path: Path) -> None:
    plt = _pyplot()
    groups = _curves(doc)
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (unit, curves) in zip(axes.flat, sorted(groups.items())):
        _plot_curves(ax, curves, unit)
        ax.set_title(f"latency percentiles ({unit})", fontsize=9, loc="left")
    fig.suptitle(_title(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_summary(doc: dict, path: Path) -> None:
    """The README's one picture: peers' commands/s on the shared flow, and
    Engine.submit latency per flow mix."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 1]})
    peers = doc["scenarios"].get("peers", {})
    if peers.get("status") == "ok":
        _barh(left, peers["figures"], "the same flow through each engine")
    else:
        left.axis("off")
    curves = _curves(doc, "flows.").get("us", [])
    if curves:
        _plot_curves(right, curves, "µs per command")
        right.set_title("Engine.submit latency per flow", fontsize=9, loc="left")
    else:
        right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
