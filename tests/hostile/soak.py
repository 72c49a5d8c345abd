"""Run the hostile property tests long, and print what was tried and what survived.

    .venv/bin/python tests/hostile/soak.py                    # 300 random days per property
    .venv/bin/python tests/hostile/soak.py --examples 2000 --seed 7 --only server

The same tests as in the suite (tests/hostile/test_properties.py), under the `hostile-long`
Hypothesis profile: random (not derandomized) days, many of them, and every day is checked
and counted instead of stopping at the first broken property. At the end it prints, per
property test, the days tried and survived, the exit codes, the classes of bad input with how
many days carried each and how many of those survived, and the kinds of violation seen. The
strict-xfail marks are ignored (--runxfail), so the exit status says whether every day held.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300,
                        help="clinic days per property test (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (random)")
    parser.add_argument("--only", choices=("bundle", "server"), default=None,
                        help="only the bundle-folder or only the FHIR-server property")
    args = parser.parse_args(argv)
    os.environ["HYPOTHESIS_PROFILE"] = "long"
    os.environ["HOSTILE_EXAMPLES"] = str(args.examples)
    options = [str(HERE / "test_properties.py"), "-q", "--runxfail", "-p", "no:cacheprovider",
               "-o", "addopts=", "--tb=line", "--show-capture=no"]
    if args.seed is not None:
        options.append(f"--hypothesis-seed={args.seed}")
    if args.only:
        options += ["-k", args.only]
    return int(pytest.main(options))


if __name__ == "__main__":
    sys.exit(main())
