"""Every reducer on the same videos at the same budget, judged by SPEC §9's proxies against the
spread of `random` (`python -m aot_kernels compare`; the demo and benchmarks/fidelity_sweep.py
reuse it).

For each video and retention: each variant's proxies (metrics.proxies) and time, and the band
of `random` over several seeds (min and max of each proxy, on the mean over the videos). A value
inside the band reads as "no difference from keeping tokens at random" and is marked `~`; above
it `+`, below it `-`. Cases whose encoder has blocks (DINOv2) also get the reader proxy
(metrics.reader, SPEC §9.2): each variant reduces the block-L tokens (with block L's scores)
and the frames' [CLS] tokens read the result through the remaining blocks: columns `reader`
(whole video) and `reader_frame` (each frame with its own tokens), with their own random band.
Every table names the encoder that made its tokens.

"aot-authors" has no retention: it keeps what its anchors (on the un-pooled grid) and the
model's 2x2 pooling leave. Here it runs on the same 14 x 14 features as the others, taken as
its un-pooled grid (so it also pools them 2 x 2, to 7 x 7), with the LLaVA-OneVision MVBench
setting (SPEC §8.8) and its anchors per frame chosen per video so that its token count comes as
close to the budget as it can; the table shows the count it reached. Its proxies judge pooled
tokens against the unpooled ones: read its row as indicative.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import reducers
from . import metrics
from ..reducers.video import grid_of, retention as check_retention

Variant = Tuple[str, str, dict]  # (label, reducer name, config)
PROXIES = ("readout", "reconstruction", "temporal", "needle")  # the set proxies
READER = ("reader", "reader_frame")  # the reader proxy, where the encoder has blocks
COLUMNS = PROXIES + READER  # the table's columns


@dataclass
class Case:
    """One video to judge on: features [F,N,D], scores [F,N] (or None), grid, needle indices,
    local_scores [F,N] (or None), encoder (its label, for the tables) and reader (the reader
    proxy's inputs, metrics.Reader, or None)."""
    name: str
    features: torch.Tensor
    scores: Optional[torch.Tensor]
    grid: Optional[Tuple[int, int]]
    needle: Optional[torch.Tensor] = None
    local_scores: Optional[torch.Tensor] = None
    encoder: str = "given features"
    reader: Optional[metrics.Reader] = None


def builtin_cases(names: Sequence[str] = None, dim: Optional[int] = None,
                  encoder: str = "descriptor", frames: int = 32) -> List[Case]:
    """The built-in videos (videos.NAMES by default) as cases, through `encoder`
    ("descriptor", "dinov2" or "auto"; videos.load)."""
    from . import videos

    out = []
    for name in (videos.NAMES if names is None else names):
        v = videos.load(name, dim=dim, frames=frames, encoder=encoder)
        out.append(Case(name, v.features, v.scores, v.grid, v.needle, v.local_scores, v.encoder,
                        v.reader))
    return out


def video_cases(paths: Sequence[str], frames: int = 32, encoder: str = "auto") -> List[Case]:
    """Your own videos (files, or folders of frames sorted by name; eval/footage.py) as cases:
    `frames` frames sampled uniformly, through `encoder` ("auto", "dinov2" or "descriptor").
    With DINOv2 the encoding is cached on disk, keyed by the file's path, size and mtime (a
    frame folder: its files' names, sizes and mtimes) and `frames`."""
    from . import encoders, footage

    if isinstance(paths, (str, bytes, os.PathLike)) or not paths:
        raise ValueError("paths must be a non-empty list of video files or frame folders")
    enc, _ = encoders.get(encoder) if isinstance(encoder, str) else (encoder, None)
    frames = footage._frames_arg(frames)
    out = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"video {path!r}: no such file or folder")
        got = enc.encode(lambda path=path: footage.read(path, frames), key=_file_key(path, frames))
        out.append(Case(path, got.features, got.scores, got.grid, None, got.local_scores,
                        got.encoder, got.reader))
    return out


def _file_key(path: str, frames: int) -> dict:
    """What identifies a video file or frame folder for the disk cache."""
    def stamp(p):
        st = os.stat(p)
        return [os.path.basename(p), st.st_size, st.st_mtime_ns]

    full = os.path.abspath(path)
    files = ([stamp(os.path.join(full, f)) for f in sorted(os.listdir(full))]
             if os.path.isdir(full) else [stamp(full)])
    return {"file": full, "frames": frames, "stamps": files}


def variants(names: Sequence[str] = reducers.ALL_NAMES, ot_merge: bool = True) -> List[Variant]:
    """Each reducer at its own merge; with ot_merge, each baseline again with merge="ot"."""
    out = []
    for name in names:
        if name not in reducers.ALL_NAMES:
            raise ValueError(f"unknown reducer {name!r}; choose from {reducers.ALL_NAMES}")
        out.append((name, name, {}))
        if ot_merge and name not in ("aot", "aot-authors"):
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
                          f"{self.total} {elapsed:5.1f}s {label:<24.24}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def authors_for_budget(case: Case, retention: float, backend: str = "auto", **config):
    """AuthorsAOTReducer (LLaVA-OneVision MVBench setting, `config` overriding) with the anchors
    per frame whose token count on this video is closest to round(retention F N) (bisection:
    the count grows with the anchors). Returns (reducer, output)."""
    frames, n, _ = case.features.shape
    target = round(retention * frames * n)
    cache = {}

    def attempt(a):
        if a not in cache:
            red = reducers.build("aot-authors", model="llava-onevision-7b", benchmark="mvbench",
                                 anchors=a, backend=backend, **config)
            cache[a] = (red, red(case.features, case.scores, case.local_scores, grid=case.grid))
        return cache[a]

    lo, hi = 1, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(attempt(mid)[1]) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda a: (abs(len(attempt(a)[1]) - target), a))
    return attempt(best)


def _reduce(name: str, config: dict, case: Case, retention: float, backend: str):
    if name == "aot-authors":
        if "anchors" in config:
            red = reducers.build(name, backend=backend, **config)
            return red, red(case.features, case.scores, case.local_scores, grid=case.grid)
        return authors_for_budget(case, retention, backend, **config)
    red = reducers.build(name, retention=retention, backend=backend, **config)
    return red, red(case.features, case.scores, case.local_scores, grid=case.grid)


def _reader_case(case: Case) -> Case:
    """The case the reader proxy reduces: block-L patch tokens and block-L scores."""
    r = case.reader
    return Case(case.name, r.patches, r.scores, case.grid, None, r.local_scores, case.encoder)


def _mean(dicts: List[Dict[str, float]]) -> Dict[str, float]:
    """Key-wise mean over the dicts that hold each key (needle: only the needle videos)."""
    keys = dict.fromkeys(k for d in dicts for k in d)
    return {k: sum(d[k] for d in dicts if k in d) / sum(k in d for d in dicts) for k in keys}


def run(cases: Sequence[Case], retentions: Sequence[float], chosen: Iterable[Variant], *,
        seeds: int = 5, repeat: int = 1, progress: bool = True, backend: str = "auto",
        skip_infeasible: bool = False, reader: bool = True) -> dict:
    """Judge every variant on every case at every retention.

    Returns {"rows": [{reducer, retention, video, tokens, ms, <proxy>: value, ...}] per
    variant, case and retention; "summary": [{reducer, retention, tokens, ms, <proxy>: mean over
    cases}]; "band": {retention: {<proxy>: (low, high)}}, the min and max over `seeds` seeds of
    `random` (no merge) of the mean over cases; "band_cases": the same per case; "encoders":
    {video: encoder label}; "reader_blocks": {video: L} for the cases read by the reader proxy}.
    ms: median of `repeat` timed calls after the call that produced the output. skip_infeasible:
    a variant that raises ValueError on a video (a budget it cannot meet there) gets a row with
    "error" instead of stopping the run, and its summary averages the other videos ("skipped"
    names the ones left out). reader: also the reader proxy (`reader`, `reader_frame`) on the
    cases that carry its inputs (Case.reader).
    """
    chosen, retentions = list(chosen), list(retentions)
    if not isinstance(reader, bool):
        raise TypeError(f"reader must be a bool, got {type(reader).__name__}")
    # a square grid when none is given, for every reducer (the authors' default is 27 x 27)
    cases = [replace(c, grid=grid_of(c.grid, c.features.shape[1]),
                     reader=c.reader if reader else None) for c in cases]
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds must be an int >= 2 (the random band), got {seeds!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    if not cases or not retentions or not chosen:
        raise ValueError("need at least one video, one retention and one reducer")
    for r in retentions:
        check_retention(r)  # a clear error before any work
    bar = Progress(len(retentions) * len(cases) * (len(chosen) + seeds), progress)
    rows, band, band_cases = [], {}, {}
    for retention in retentions:
        per_seed = [[] for _ in range(seeds)]
        band_cases[retention] = {}
        for case in cases:
            for s in range(seeds):
                got = metrics.random_runs(case.features, retention, [s], grid=case.grid,
                                          needle_indices=case.needle)[0]
                if case.reader is not None:
                    got.update(metrics.reader_random_runs(case.reader, retention, [s],
                                                          grid=case.grid)[0])
                per_seed[s].append(got)
                bar.step(f"random band {s}")
            band_cases[retention][case.name] = metrics.band([p[-1] for p in per_seed])
            for label, name, config in chosen:
                try:
                    red, out = _reduce(name, config, case, retention, backend)
                except ValueError as exc:  # e.g. a budget the setting cannot meet on this video
                    if not skip_infeasible:
                        raise
                    rows.append({"reducer": label, "retention": retention, "video": case.name,
                                 "error": str(exc)})
                    bar.step(f"{label} {case.name}")
                    continue
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    red(case.features, case.scores, grid=case.grid)
                    times.append(1e3 * (time.perf_counter() - t0))
                row = {"reducer": label, "retention": retention, "video": case.name,
                       "tokens": len(out), "ms": sorted(times)[len(times) // 2]}
                row.update(metrics.proxies(case.features, out, needle_indices=case.needle))
                if case.reader is not None:  # the same variant on the block-L tokens
                    _, kept = _reduce(name, config, _reader_case(case), retention, backend)
                    row.update(case.reader(kept))
                rows.append(row)
                bar.step(f"{label} {case.name}")
        band[retention] = metrics.band([_mean(p) for p in per_seed])
    summary = []
    for retention in retentions:
        for label, _, _ in chosen:
            mine = [r for r in rows if r["reducer"] == label and r["retention"] == retention]
            done = [r for r in mine if "error" not in r]
            # the proxies, tokens and ms averaged; retention is the key, never a mean (the mean
            # of six 0.1s is 0.09999999999999999, and the table then finds no row)
            values = _mean([{k: v for k, v in r.items()
                             if k != "retention" and (isinstance(v, float) or k == "tokens")}
                            for r in done]) if done else {}
            summary.append({"reducer": label, "retention": retention, **values,
                            "skipped": [r["video"] for r in mine if "error" in r]})
    return {"rows": rows, "summary": summary, "band": band, "band_cases": band_cases,
            "encoders": {c.name: c.encoder for c in cases},
            "reader_blocks": {c.name: c.reader.start for c in cases if c.reader is not None}}


def mark(value: float, band: Tuple[float, float]) -> str:
    """'~' inside the random band (no difference), '+' above it, '-' below it."""
    lo, hi = band
    return "~" if lo <= value <= hi else "+" if value > hi else "-"


def format_table(rows: List[dict], band: Dict[str, Tuple[float, float]],
                 columns: Sequence[str] = COLUMNS, markdown: bool = False,
                 key: str = "reducer") -> str:
    """One line per row: tokens, ms, then each proxy with its mark against `band`; a last line
    with the band. Columns missing from every row (needle without a needle video) are left out."""
    columns = [c for c in columns if any(c in r for r in rows)]
    head = [key, "tokens", "ms"] + list(columns)
    lines = []

    def cell(r, c):
        if c not in r:
            return ""
        return f"{r[c]:.4f} {mark(r[c], band[c])}" if c in band else f"{r[c]:.4f}"

    def number(r, name, spec):  # n/a: a variant infeasible on every video has no summary
        return format(r[name], spec) if name in r else "n/a"

    body = [[str(r[key]), number(r, "tokens", ".0f"), number(r, "ms", ".1f")] +
            [cell(r, c) for c in columns] for r in rows]
    body.append([f"random band ({'min-max over seeds'})", "", ""] +
                [f"{band[c][0]:.4f}-{band[c][1]:.4f}" if c in band else "" for c in columns])
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda cells: "  " + "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head)] + [fmt(b) for b in body])


def report(result: dict, per_video: bool = False, markdown: bool = False) -> str:
    """The summary table per retention (means over the videos, band of the mean), and with
    per_video one table per video and retention against that video's band."""
    out = []
    encoders = result.get("encoders", {})
    labels = sorted(set(encoders.values()))
    if labels:
        out.append("\ntokens from: " + "; ".join(
            f"{label} ({', '.join(v for v, e in encoders.items() if e == label)})"
            if len(labels) > 1 else label for label in labels))
    blocks = result.get("reader_blocks", {})
    if blocks:
        starts = sorted(set(blocks.values()))
        out.append(f"reader, reader_frame (SPEC §9.2): the frames' [CLS] tokens after block "
                   f"{'/'.join(map(str, starts))} read the reduced tokens through the remaining "
                   f"blocks of the same ViT, together (reader) or each frame with its own tokens "
                   f"(reader_frame); cosine to the unreduced read, 1.0 = no difference. A ViT "
                   f"reading, not an LLM.")
    for retention, band in result["band"].items():
        rows = [r for r in result["summary"] if r["retention"] == retention]
        videos = sorted({r["video"] for r in result["rows"] if r["retention"] == retention})
        out.append(f"\nretention {retention:g}, mean over {len(videos)} video(s) "
                   f"({', '.join(videos)}); ~ inside the random band, + above, - below:")
        out.append(format_table(rows, band, markdown=markdown))
        if per_video:
            for v in videos:
                mine = [r for r in result["rows"] if r["retention"] == retention and r["video"] == v]
                out.append(f"\n  {v} at {retention:g}:")
                out.append(format_table(mine, result["band_cases"][retention][v], markdown=markdown))
    return "\n".join(out)


def plot(result: dict, path: str, title: str = "") -> None:
    """One panel per retention and proxy: a bar per reducer (mean over videos), the random band
    shaded; green = AOT, orange = the authors' variant, blue = baseline + OT merge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retentions = list(result["band"])
    columns = [c for c in COLUMNS if any(c in r for r in result["summary"])]
    fig, axes = plt.subplots(len(retentions), len(columns), squeeze=False,
                             figsize=(3.6 * len(columns), 3.2 * len(retentions) + 0.5))
    for i, retention in enumerate(retentions):
        rows = [r for r in result["summary"] if r["retention"] == retention]
        labels = [r["reducer"] for r in rows]
        colours = ["tab:green" if lab == "aot" else "tab:orange" if lab == "aot-authors" else
                   "tab:blue" if lab.endswith("+ot") else "tab:gray" for lab in labels]
        for j, c in enumerate(columns):
            ax = axes[i][j]
            vals = [r.get(c, float("nan")) for r in rows]
            lo, hi = result["band"][retention][c]
            ax.axhspan(lo, hi, color="gold", alpha=0.5, zorder=0, label="random band")
            ax.bar(range(len(rows)), vals, color=colours, zorder=1)
            finite = [v for v in vals if v == v] + [lo]
            low = min(finite)
            ax.set_ylim(max(0.0, low - 0.15 * (1 - low) - 0.02), 1.0)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{c} at {retention:g}", fontsize=9)
            if j == 0 and i == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "SPEC §9 proxies (mean over videos; 1 = ideal): green AOT, orange "
                 "aot-authors, blue baseline+OT, band = random over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
