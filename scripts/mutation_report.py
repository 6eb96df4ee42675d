"""Per-module kill rates of the last mutmut run (reads `mutmut results --all true`).

Usage: .venv/bin/python scripts/mutation_report.py [--survivors]
Mutants listed in docs/mutation-equivalent.txt (one name a line, `#` comments) are equivalent
to the original (no test can tell them apart); they are shown apart, not counted as killed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "docs" / "mutation-equivalent.txt"
# "module.x_function__mutmut_3" or "module.xǁClassǁmethod__mutmut_3"
NAME = re.compile(r"^(?P<module>[\w.]+?)\.x(?:ǁ(?P<cls>\w+)ǁ|_)(?P<func>\w+?)__mutmut_\d+$")


def results() -> list[tuple[str, str]]:
    out = subprocess.run(
        [str(ROOT / ".venv/bin/mutmut"), "results", "--all", "true"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pairs = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and NAME.match(name):
            pairs.append((name, status))
    return pairs


def equivalent() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in EQUIVALENT.read_text().splitlines())
    return {line for line in lines if line}


def main() -> int:
    pairs, same = results(), equivalent()
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for name, status in pairs:
        match = NAME.match(name)
        assert match is not None
        if status in ("survived", "no tests") and name in same:
            status = "equivalent"
        per_module[match["module"]][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{name}: {status}")
    print(f"{'module':42} {'mutants':>7} {'killed':>6} {'equiv':>5} {'left':>5} {'rate':>6}")
    for module, counts in sorted(per_module.items()):
        total = sum(counts.values())
        killed = counts["killed"] + counts["timeout"]
        left = counts["survived"] + counts["no tests"] + counts["suspicious"]
        unchecked = counts["not checked"]
        # Equivalent mutants cannot be killed: the rate is over the mutants that can.
        rate = killed / (total - counts["equivalent"] - unchecked or 1)
        note = f"  ({unchecked} not checked)" if unchecked else ""
        print(
            f"{module:42} {total:7} {killed:6} {counts['equivalent']:5} {left:5} {rate:6.1%}{note}"
        )
    if "--survivors" in sys.argv:
        print("\nSurviving mutants (`.venv/bin/mutmut show <name>` shows the change):")
        print("\n".join(f"  {s}" for s in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
