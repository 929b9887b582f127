"""``smr demo``: the whole pipeline end to end on synthetic data (placeholder until it lands)."""


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the pipeline end to end on built-in synthetic data")
    p.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    print("smr demo: nothing to run yet")
    return 0
