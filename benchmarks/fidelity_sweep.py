"""AOTReducer's options one at a time around its defaults, judged by SPEC §9's proxies on the
built-in videos against the band of `random` (issue 13, item 5).

    python benchmarks/fidelity_sweep.py [--retention 0.1 0.25] [--videos ...] [--seeds 5]
                                        [--encoder descriptor|dinov2|auto] [--no-reader]
                                        [--json PATH] [--quick]

Prints one markdown table per retention: the default first, then each option's other values
(the rest at their defaults), each proxy's mean over the videos with its mark against the
random band (~ inside, + above, - below) and its change from the default in units of the band's
width (so +2.0 reads "two random-spreads better than the default"). It changes no default:
the reading is for whoever chooses them.

Options: eps, lam_intra, lam_inter, marginals, anchor_share, clip_len, segmentation, quota
('uniform': the even split) and content_share. The paper's settings together:
`--combined eps=0.1 lam_inter=1 quota=uniform`.
"""
from __future__ import annotations

import argparse
import ast
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from aot_kernels import AOTReducer  # noqa: E402
from aot_kernels.eval import compare, videos  # noqa: E402

COLUMNS = compare.COLUMNS  # the set proxies, and the reader proxy's where the encoder has blocks
SHARES = (0.2, 0.4, 0.6, 0.95)  # besides the default 0.5


def options(retention: float, frames: int = 32, tokens: int = 196, quick: bool = False
            ) -> List[Tuple[str, str, dict]]:
    """(option, label, AOTReducer keywords) for every value swept; the default first."""
    grid = {  # around AOTReducer()'s defaults (eps 0.02, lam_inter 0, quota 'adaptive')
        "eps": [0.01, 0.05, 0.1, 0.2, 0.5],
        "lam_intra": [0.0, 0.5, 2.0, 4.0],
        "lam_inter": [0.5, 1.0, 2.0, 4.0],
        "marginals": ["unit"],
        "clip_len": [2, 4, 16, 32],
        "segmentation": ["dynamic"],
        "quota": ["uniform"],
        "content_share": [0.25, 0.75, 0.9],
    }
    if quick:
        grid = {k: v[:1] for k, v in grid.items()}
    out = [("default", "AOTReducer()", {})]
    for name, values in grid.items():
        out += [(name, f"{name}={v!r}" if isinstance(v, str) else f"{name}={v:g}", {name: v})
                for v in values]
    # anchor share: AOTReducer's own option (with clips unset it sets the clip count, M stays
    # round(0.7 N)); a share whose plan equals the default's is left out
    def split(share=None):
        p = AOTReducer(retention, anchor_share=share).plan(frames, tokens)
        return p.anchors, len(p.clips)

    seen = {split()}
    for share in (SHARES[:1] if quick else SHARES):
        m, c = split(share)
        if (m, c) not in seen:
            seen.add((m, c))
            out.append(("anchor share", f"share {share:g} ({c} clips x M={m})",
                        {"anchor_share": share}))
    return out


def table(result: dict, opts, retention: float) -> str:
    band = result["band"][retention]
    rows = {r["reducer"]: r for r in result["summary"] if r["retention"] == retention}
    base = rows["AOTReducer()"]
    cols = [c for c in COLUMNS if c in base]
    head = ["option", "setting"] + cols
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(cols)]
    notes = []
    for option, label, _ in opts:
        r = rows[label]
        if r["skipped"]:  # infeasible on some videos: not comparable with the band
            why = {x["video"]: x["error"] for x in result["rows"]
                   if x["reducer"] == label and "error" in x}
            notes.append(f"{label}: infeasible on {', '.join(r['skipped'])} "
                         f"({next(iter(why.values()))[:120]}...)")
            lines.append(f"| {option} | {label} | " + " | ".join(
                f"n/a ({len(r['skipped'])} video(s) infeasible)" for _ in cols) + " |")
            continue
        cells = []
        for c in cols:
            width = max(band[c][1] - band[c][0], 1e-12)
            delta = (r[c] - base[c]) / width
            extra = "" if option == "default" else f" ({delta:+.1f})"
            cells.append(f"{r[c]:.4f} {compare.mark(r[c], band[c])}{extra}")
        lines.append(f"| {option} | {label} | " + " | ".join(cells) + " |")
    lines.append("| random band | min-max over seeds | " +
                 " | ".join(f"{band[c][0]:.4f}-{band[c][1]:.4f}" for c in cols) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def best(result: dict, opts, retention: float) -> List[str]:
    """Per proxy, the setting with the highest value and its gain over the default in band
    widths."""
    band = result["band"][retention]
    rows = {r["reducer"]: r for r in result["summary"] if r["retention"] == retention}
    base = rows["AOTReducer()"]
    out = []
    for c in [c for c in COLUMNS if c in base]:
        label = max((lab for _, lab, _ in opts if not rows[lab]["skipped"]),
                    key=lambda lab: rows[lab][c])
        width = max(band[c][1] - band[c][0], 1e-12)
        out.append(f"{c}: {label} {rows[label][c]:.4f} "
                   f"({(rows[label][c] - base[c]) / width:+.1f} band widths over the default "
                   f"{base[c]:.4f}; band {band[c][0]:.4f}-{band[c][1]:.4f})")
    return out


def _value(text: str):
    """A Python literal (0.02, None, 'unit'), or the bare word itself (quota=adaptive)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.isidentifier():
            return text
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--retention", type=float, nargs="+", default=[0.10, 0.25])
    p.add_argument("--videos", nargs="+", choices=videos.NAMES, default=list(videos.NAMES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--encoder", default="descriptor", choices=["descriptor", "dinov2", "auto"],
                   help="the built-in videos' tokens (SPEC §9.1; default: the descriptor tower)")
    p.add_argument("--no-reader", action="store_true", help="skip the reader proxy (DINOv2)")
    p.add_argument("--quick", action="store_true", help="one value per option (for tests)")
    p.add_argument("--combined", nargs="+", metavar="KEY=VALUE", action="append", default=[],
                   help="also one row with these options together (repeatable), e.g. "
                   "--combined eps=0.02 lam_inter=0")
    p.add_argument("--combined-only", action="store_true",
                   help="only the default and the --combined rows")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    try:
        cases = compare.builtin_cases(args.videos, encoder=args.encoder)
    except RuntimeError as exc:  # DINOv2 asked for, not installed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report: Dict[str, dict] = {}
    print(f"# AOTReducer options, one at a time (SPEC §9 proxies, mean over {', '.join(args.videos)})")
    print(f"\ncommand: python benchmarks/fidelity_sweep.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}; commit {commit}")
    print(f"tokens: {cases[0].encoder}")
    print("cells: mean over the videos, mark against the random band (~ inside, + above, "
          "- below), (change from the default in band widths)")
    if cases[0].reader is not None and not args.no_reader:
        print(f"reader, reader_frame: the reader proxy (SPEC §9.2) from block {cases[0].reader.start}: "
              "a ViT reading, not an LLM")
    for retention in args.retention:
        opts = options(retention, quick=args.quick)
        if args.combined_only:
            opts = opts[:1]
        for combo in args.combined:
            try:
                config = {k: _value(v) for k, v in (item.split("=", 1) for item in combo)}
                AOTReducer(retention, **config)  # names and values checked before any work
            except (ValueError, SyntaxError, TypeError) as exc:
                print(f"error: --combined takes AOTReducer KEY=VALUE items, got {combo} ({exc})",
                      file=sys.stderr)
                return 2
            opts.append(("combined", " ".join(combo), config))
        chosen = [(label, "aot", config) for _, label, config in opts]
        try:
            result = compare.run(cases, [retention], chosen, seeds=args.seeds,
                                 progress=not args.no_progress, skip_infeasible=True,
                                 reader=not args.no_reader)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"\n## retention {retention:g}\n")
        print(table(result, opts, retention))
        print("\nbest per proxy: " + "; ".join(best(result, opts, retention)))
        report[str(retention)] = {"options": opts, "summary": result["summary"],
                                  "rows": result["rows"], "band": result["band"][retention]}
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"commit": commit, **report}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
