"""The mutation score of `make mutate`, per module and in all, from mutmut's results.

A surviving mutant named in docs/mutation.md (a table row starting with its name in backticks) is
explained there: equivalent, or kept for the reason given. The score is killed / (mutants - those
explained as equivalent); below the goal, or with a survivor the report does not explain, the
tool exits 1 and lists them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

GOAL = 0.95
REPORT = Path(__file__).resolve().parents[1] / "docs" / "mutation.md"
# "| `router_impl.routing.engine.x__ascii__mutmut_5` | equivalent | why ... |"
_ROW = re.compile(r"^\|\s*`(?P<name>[^`]+__mutmut_\d+)`\s*\|\s*(?P<verdict>[a-z]+)\s*\|")
_RESULT = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+):\s*(?P<status>.+?)\s*$")


def explained(report: str) -> dict[str, str]:
    """Survivors the report explains: name -> verdict ("equivalent" or "kept")."""
    return {m["name"]: m["verdict"] for line in report.splitlines() if (m := _ROW.match(line))}


def module_of(name: str) -> str:
    """router_impl.routing.engine.x_plan_route__mutmut_5 -> router_impl.routing.engine"""
    return name.rsplit(".", 1)[0]


def results(mutmut: str) -> dict[str, str]:
    listed = subprocess.run(
        [mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    return {m["name"]: m["status"] for line in listed.splitlines() if (m := _RESULT.match(line))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    args = parser.parse_args(argv)
    statuses = results(args.mutmut)
    if not statuses:
        print("no mutmut results: run `make mutate`", file=sys.stderr)
        return 1
    verdicts = explained(REPORT.read_text(encoding="utf-8"))
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    unexplained: list[str] = []
    for name, status in sorted(statuses.items()):
        counts = by_module[module_of(name)]
        counts["mutants"] += 1
        if status in ("killed", "timeout"):  # a mutant that hangs the tests is caught too
            counts["killed"] += 1
        elif verdicts.get(name) == "equivalent" and status == "survived":
            counts["equivalent"] += 1
        else:
            counts["left"] += 1
            if name not in verdicts:
                unexplained.append(f"{name}: {status}")
    total: Counter[str] = Counter()
    print(f"{'module':42} {'mutants':>7} {'killed':>7} {'equiv.':>7} {'left':>5} {'score':>7}")
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        print(
            f"{module:42} {counts['mutants']:7} {counts['killed']:7} {counts['equivalent']:7}"
            f" {counts['left']:5} {_score(counts):7.1%}"
        )
    print(
        f"{'all':42} {total['mutants']:7} {total['killed']:7} {total['equivalent']:7}"
        f" {total['left']:5} {_score(total):7.1%}"
    )
    for line in unexplained:
        print(f"not explained in {REPORT.name}: {line}")
    return 0 if _score(total) >= GOAL and not unexplained else 1


def _score(counts: Counter[str]) -> float:
    judged = counts["mutants"] - counts["equivalent"]
    return counts["killed"] / judged if judged else 1.0


if __name__ == "__main__":
    sys.exit(main())
