#!/usr/bin/env python3
"""Compares a driver suite's results direct and through the gateway (used by scripts/compat).

Usage: compat-report.py SUITE junit DIRECT.xml THROUGH.xml
       compat-report.py SUITE node DIRECT_DIR THROUGH_DIR
Prints the tests run, passed direct, passed through, the ratio of the tests passing direct
that pass through too, and the names of those that do not.
"""

import pathlib
import sys
import xml.etree.ElementTree as ET


def junit(path):
    """test id -> outcome, from a pytest junit xml."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            out[name] = "skipped"
        elif kinds & {"failure", "error"}:
            out[name] = "failed"
        else:
            out[name] = "passed"
    return out


def node(directory):
    """test id -> outcome, from node-postgres's harness logs (one per file)."""
    out = {}
    for log in sorted(pathlib.Path(directory).glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.endswith("✔"):
                out[f"{log.stem}::{line[:-1].strip()}"] = "passed"
            elif "FAILED!" in line:
                out[f"{log.stem}::{line.split('FAILED!')[0].strip()}"] = "failed"
            elif line.endswith("✘"):
                out.setdefault(f"{log.stem}::(file)", "failed")
    return out


def main():
    suite, kind, direct, through = sys.argv[1:5]
    read = junit if kind == "junit" else node
    d, t = read(direct), read(through)
    passed_direct = {k for k, v in d.items() if v == "passed"}
    passed_both = {k for k in passed_direct if t.get(k) == "passed"}
    passed_through = {k for k, v in t.items() if v == "passed"}
    ratio = 100.0 * len(passed_both) / max(1, len(passed_direct))
    print(f"== {suite}")
    print(f"tests seen: direct {len(d)}, through {len(t)}")
    print(f"passed: direct {len(passed_direct)}, through {len(passed_through)}, both {len(passed_both)}")
    print(f"pass ratio through/direct: {ratio:.2f}%")
    not_run = {k for k in passed_direct if k not in t}
    if not_run:
        # node-postgres's harness stops a file at its first failure: the tests after it did
        # not run through the gateway (neither passed nor failed).
        ran = len(passed_direct) - len(not_run)
        print(
            f"of the {ran} tests passing direct that ran through the gateway: "
            f"{100.0 * len(passed_both) / max(1, ran):.2f}% pass "
            f"({len(not_run)} did not run: their file stopped at an earlier failure)"
        )
    for k in sorted(passed_direct - passed_both):
        print(f"  passes direct, not through: {k} ({t.get(k, 'not run')})")
    for k in sorted(passed_through - passed_direct):
        print(f"  passes through, not direct: {k}")


if __name__ == "__main__":
    main()
