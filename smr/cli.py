"""The ``smr`` command: one entry point, one sub-command per job.

Each module listed in ``COMMAND_MODULES`` exposes ``add_parsers(subparsers)``, which registers its
sub-commands with ``set_defaults(func=...)``. Those modules import only argparse-level things at
the top, so ``smr --help`` stays fast; heavy imports (torch, onnxruntime) happen inside ``func``.

Exit status, the same for every sub-command (:func:`run_command` enforces what it can):

- 0: done;
- 1 (:data:`EXIT_FAILURE`): the work failed (a server that does not answer, a failed export or
  training run, damaged inputs skipped, an unexpected error);
- 2 (:data:`EXIT_USAGE`): the command was used wrongly (bad option values, missing or unusable
  input files): fix the command line and run it again.

A sub-command returns its status, or raises ``SystemExit("smr <cmd>: error: ...")`` for an error
the user can fix: the message is printed and :class:`CommandExit` carries status 2 out of
:func:`main`, or 1 when the message was raised while handling a ``RuntimeError`` (a failure, e.g.
``raise SystemExit(...) from None`` in an ``except TrainError``). Any other exception is printed as
one ``smr <cmd>: error:`` line with status 1 (``SMR_DEBUG=1`` shows the traceback instead).

Only the command layer (the ``cli.py`` modules, this one, the demo) raises ``SystemExit``: library
modules raise their own exceptions (``TrainError``, ``ConfigError``, ...), which the sub-command
functions in ``cli.py`` turn into those messages (``tests/test_imports.py`` checks it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from smr import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "SMR_DEBUG"

COMMAND_MODULES = [
    "smr.data.cli",  # data check
    "smr.synth.cli",  # synth, synth-slide
    "smr.train.cli",  # train, evaluate, cv
    "smr.export.cli",  # export
    "smr.serving.cli",  # serve, bench
    "smr.clients.cli",  # classify, score-slide, score-slides
    "smr.clients.recount",  # recount
    "smr.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smr",
        description="Spatial Maturity Regression: classify bone-marrow cells and place each one "
        "on a learnt maturation curve.",
    )
    parser.add_argument("--version", action="version", version=f"smr {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="log_verbose",
        action="count",
        default=0,
        help="more messages from the library (-vv: debug); before the sub-command",
    )
    parser.add_argument(
        "-q", "--quiet", dest="log_quiet", action="store_true", help="only errors; before the sub-command"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(subparsers)
    return parser


class CommandExit(SystemExit):
    """A sub-command's ``SystemExit("message")`` once the message is printed: ``code`` is the exit
    status (so the interpreter prints nothing more), ``str()`` the message (for callers and tests)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _command_name(args: argparse.Namespace) -> str:
    parts = [getattr(args, "command", None)]
    parts += [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join(p for p in parts if p) or "?"


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command and turn whatever it ends with into an exit status (module docstring)."""
    name = _command_name(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `smr data check DIR --json | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CommandExit:
        raise
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            raise
        message = str(exc.code)
        message = message if message.startswith("smr ") else f"smr {name}: error: {message}"
        print(message, file=sys.stderr)
        status = EXIT_FAILURE if isinstance(exc.__context__, RuntimeError) else EXIT_USAGE
        raise CommandExit(message, status) from None
    except MemoryError:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"smr {name}: error: out of memory; check the sizes and scales given on the command line",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    except Exception as exc:  # a bug or an unforeseen failure: one line, not a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"smr {name}: error: {type(exc).__name__}: {detail} (unexpected; run again with "
            f"{DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


class _Handler(logging.StreamHandler):
    """The command line's handler of the ``smr`` loggers (one, however often :func:`main` runs); it
    writes to whatever ``sys.stderr`` is at the time (tests and the demo replace it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; sys.stderr is used instead
        pass


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Library modules log through ``logging.getLogger(__name__)`` (``smr.*``); the command line
    shows their warnings on stderr, INFO with ``-v``, DEBUG with ``-vv``, errors only with ``-q``."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logger = logging.getLogger("smr")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_verbose, args.log_quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
