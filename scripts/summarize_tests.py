"""Print one closing line for all pytest runs of scripts/test.sh (from their JUnit XML)."""

import sys
import xml.etree.ElementTree as ET


def main(paths: list[str]) -> int:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            print(f"missing test report {path}", file=sys.stderr)
            return 1
        for suite in root.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    print(f"all suites: {passed} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed or totals["tests"] == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
