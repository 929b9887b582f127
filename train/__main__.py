"""``python -m smr.train DATA --out RUN [options]``: the same as ``smr train``, for ``torchrun``.

torchrun --nproc_per_node=2 -m smr.train DATA --out RUN --device cpu
"""

from __future__ import annotations

import sys

from .cli import get_args_parser, train_command


def _main(argv: list[str] | None = None) -> int:
    return train_command(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(_main())
