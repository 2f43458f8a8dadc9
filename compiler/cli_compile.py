"""``bitnas compile`` and ``bitnas gate``."""

from __future__ import annotations

import argparse
import sys

from bitnas.errors import UserError


def _cmd_compile(args: argparse.Namespace) -> int:
    from bitnas.project import Project

    project = Project.load(args.project)
    arts = project.compile(pick=args.pick, candidate_file=args.candidate, out=args.out, use_cache=not args.no_cache)
    for a in arts:
        m = a.manifest["measured"]
        print(f"{a.root}: candidate {a.manifest['candidate']['id']}, accuracy {m['accuracy']:.4f}, "
              f"latency {m['latency_ms']:.4f} ms (x{m['latency_ms'] / m['latency_ms_fp32']:.2f} of fp32), "
              f"{a.manifest['size_bytes_on_disk']} bytes")
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from bitnas import ui
    from bitnas.gate import Tolerance, compare, load_figures

    base, cur = load_figures(args.baseline), load_figures(args.current)
    if base["candidate"] and cur["candidate"] and base["candidate"] != cur["candidate"] and not args.any_candidate:
        raise UserError(f"{args.current}: candidate {cur['candidate']} is not the baseline's {base['candidate']} "
                        "(pass --any-candidate to compare anyway)")
    checks = compare(base, cur, Tolerance(args.latency_tol, args.size_tol, args.accuracy_tol))
    bad = [c for c in checks if c.regressed]
    rows = [[c.what, c.baseline, c.current, c.limit, "REGRESSED" if c.regressed else "ok"] for c in checks]
    ui.console.print(ui.table("gate: " + ("FAILED" if bad else "passed"), ["what", "baseline", "current", "limit",
                                                                           "verdict"], rows))
    if bad:
        print(f"bitnas gate: {len(bad)} regression(s): " + ", ".join(c.what for c in bad), file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    c = sub.add_parser("compile", help="compile candidates of the project's search into verified artifacts")
    c.add_argument("--project", required=True, help="project.yaml (or the run folder holding one)")
    c.add_argument("--pick", help="knee (default: the project's compile.pick), all-front, or a candidate id")
    c.add_argument("--candidate", help="a JSON file holding a candidate (or a manifest), instead of --pick")
    c.add_argument("--out", help="artifacts go to OUT/<candidate id>/ (default: the run folder's artifacts/)")
    c.add_argument("--no-cache", action="store_true", help="re-run every pass")
    c.set_defaults(fn=_cmd_compile)

    g = sub.add_parser("gate", help="fail (exit 1) when an artifact regressed against a baseline")
    g.add_argument("--baseline", required=True, help="baseline manifest.json")
    g.add_argument("--current", required=True, help="current manifest.json")
    g.add_argument("--latency-tol", type=float, default=0.10, help="allowed relative rise of latency/fp32 (0.10)")
    g.add_argument("--size-tol", type=float, default=0.02, help="allowed relative rise of size on disk (0.02)")
    g.add_argument("--accuracy-tol", type=float, default=0.01, help="allowed absolute accuracy drop (0.01)")
    g.add_argument("--any-candidate", action="store_true", help="compare even if the candidates differ")
    g.set_defaults(fn=_cmd_gate)
