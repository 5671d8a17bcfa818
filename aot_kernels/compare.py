"""Every reducer on the same videos at the same budget: time and fidelity side by side
(`python -m aot_kernels compare`; the demo prints a few of its rows)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from . import metrics, reducers
from .bench import median_ms

Variant = Tuple[str, str, dict]  # (label, reducer name, config)


def variants(names: Sequence[str] = reducers.NAMES, ot_merge: bool = True) -> List[Variant]:
    """Each reducer at its own merge; with ot_merge, each baseline again with merge="ot"."""
    out = []
    for name in names:
        if name not in reducers.REDUCERS:
            raise ValueError(f"unknown reducer {name!r}; choose from {reducers.NAMES}")
        out.append((name, name, {}))
        if ot_merge and name != "aot":
            out.append((f"{name}+ot", name, {"merge": "ot"}))
    return out


class Progress:
    """A one-line progress bar on stderr (no dependency); silent when disabled."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30, stream=None):
        self.total, self.done, self.enabled, self.width = total, 0, enabled, width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def step(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/"
                          f"{self.total} {elapsed:5.1f}s {label:<16}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def run(videos: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor], Tuple[int, int]]],
        retention: float, chosen: Iterable[Variant], repeat: int = 3, progress: bool = True,
        backend: str = "auto") -> List[dict]:
    """videos: (features [F,N,D], scores [F,N], grid) each. Returns one row per variant with
    tokens (mean per video), ms (median per video, averaged), attention fidelity and set
    distance (averaged over videos)."""
    chosen = list(chosen)
    bar = Progress(len(chosen) * len(videos), progress)
    rows = []
    for label, name, config in chosen:
        reducer = reducers.build(name, retention=retention, backend=backend, **config)
        tokens, ms, attention, distance = [], [], [], []
        for features, scores, grid in videos:
            out = reducer(features, scores, grid=grid)
            ms.append(median_ms(lambda: reducer(features, scores, grid=grid), min_time=0.0,
                                min_runs=repeat, max_runs=repeat))
            tokens.append(len(out))
            attention.append(metrics.readout(features, out)["readout"])
            distance.append(metrics.reconstruction(features, out))
            bar.step(label)
        k = len(videos)
        rows.append({"reducer": label, "tokens": sum(tokens) / k, "ms": sum(ms) / k,
                     "attention": sum(attention) / k, "reconstruction": sum(distance) / k})
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = [f"  {'reducer':<16} {'tokens':>7} {'ms':>8} {'readout':>19} "
             f"{'reconstruction':>13}"]
    for r in rows:
        lines.append(f"  {r['reducer']:<16} {r['tokens']:>7.0f} {r['ms']:>8.1f} "
                     f"{r['attention']:>19.4f} {r['reconstruction']:>13.4f}")
    return "\n".join(lines)


def plot(rows: List[dict], path: str, title: str = "") -> None:
    """Attention fidelity (bars) and time (labels) per reducer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["reducer"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(rows), 4.0))
    colours = ["tab:green" if lab == "aot" else "tab:blue" if lab.endswith("+ot") else "tab:gray"
               for lab in labels]
    fids = [r["attention"] for r in rows]
    ax.bar(range(len(rows)), fids, color=colours)
    for i, r in enumerate(rows):
        ax.text(i, fids[i], f"{r['ms']:.0f} ms", ha="center", va="bottom", fontsize=7)
    low = min(fids)
    ax.set_ylim(max(0.0, low - 0.1 * (1 - low) - 0.02), 1.0)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("attention fidelity (1 = exact)")
    ax.set_title(title or "same budget: green = AOT, blue = baseline + OT merge", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
