"""Sub-commands of this part (placeholder until the part lands)."""


def add_parsers(subparsers) -> None:  # noqa: ARG001 - filled in by the part's implementation
    return None
