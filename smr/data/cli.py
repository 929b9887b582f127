def add_parsers(subparsers):
    p = subparsers.add_parser("data", help="inspect a folder dataset")
    p.set_defaults(func=lambda a: 0)
