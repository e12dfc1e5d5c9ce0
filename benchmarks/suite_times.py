"""The test suite's time, two trees side by side: the tests both have, test by test.

    # one tree at a time, nothing else on the machine; the base in a worktree on this venv
    git worktree add /tmp/base <rev>
    (cd /tmp/base && PYTHONPATH=/tmp/base/src ../main/.venv/bin/python -m pytest -q -n 2 \
        --dist loadfile --junitxml=/tmp/junit-base.xml)
    .venv/bin/python -m pytest -q -n 2 --dist loadfile --junitxml=/tmp/junit-now.xml
    python benchmarks/suite_times.py /tmp/junit-base.xml /tmp/junit-now.xml

A test's time is JUnit's: setup, call and teardown together (a module's server start falls
on its first test). Tests are matched by module and name; skipped ones left out. Under two
workers a test's time depends on what ran beside it, so read the sums, not single tests.
"""

from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET


def load(path: str) -> dict[str, float]:
    """Seconds per test that ran (not skipped), by `module::name`."""
    times: dict[str, float] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("skipped") is None:
            times[f"{case.get('classname')}::{case.get('name')}"] = float(case.get("time") or 0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="JUnit XML of the base tree's run")
    parser.add_argument("now", help="JUnit XML of this tree's run")
    parser.add_argument("--files", type=int, default=12, help="modules to list each way")
    args = parser.parse_args()
    base, now = load(args.base), load(args.now)
    common = [test for test in base if test in now]
    added = [test for test in now if test not in base]
    before, after = sum(base[t] for t in common), sum(now[t] for t in common)
    print(f"base: {len(base)} tests, {sum(base.values()):.0f} s")
    print(f"now:  {len(now)} tests, {sum(now.values()):.0f} s")
    print(f"in both: {len(common)} tests, {before:.0f} s -> {after:.0f} s ({after / before:.3f}x)")
    print(f"only now: {len(added)} tests, {sum(now[t] for t in added):.0f} s")
    was: collections.Counter[str] = collections.Counter()
    became: collections.Counter[str] = collections.Counter()
    for test in common:
        module = test.split("::", 1)[0]
        was[module] += base[test]
        became[module] += now[test]
    order = sorted(was, key=lambda m: became[m] - was[m], reverse=True)
    print("\nmodules, the tests in both, most time added first:")
    for module in [*order[: args.files], "...", *order[-args.files :]]:
        if module == "...":
            print("  ...")
            continue
        change = became[module] - was[module]
        print(f"  {change:+7.1f} s  {was[module]:7.1f} -> {became[module]:7.1f}  {module}")


if __name__ == "__main__":
    main()
