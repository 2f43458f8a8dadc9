"""``bitnas search --project P``: the project's searcher on its problem for a budget of true evaluations.

Objectives and constraints come from the project config; true evaluations run where ``search.executor``
says (in this process, a process pool, Ray); every evaluated candidate goes to the run folder's study
(SQLite) as it finishes, so a rerun, killed or not, resumes.
"""

from __future__ import annotations

import argparse
import json


def _cmd_search(args: argparse.Namespace) -> int:
    from bitnas.project import Project

    project = Project.load(args.project)
    summary = project.search()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from bitnas.project import Project

    project = Project.load(args.project)
    project.supernet()
    print(json.dumps({"checkpoint": str(project.run.supernet), "fingerprint": project.supernet_fingerprint}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("search", help="run the project's searcher for its budget of true evaluations")
    p.add_argument("--project", required=True, help="project.yaml (or the run folder holding one)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(fn=_cmd_search)

    t = sub.add_parser("train", help="train the project's supernet (resumes from its checkpoint)")
    t.add_argument("--project", required=True, help="project.yaml (or the run folder holding one)")
    t.set_defaults(fn=_cmd_train)
