"""One set of command-line validators for every ``curvbench`` command.

Each is an argparse ``type=``: it returns the parsed value or raises
:class:`argparse.ArgumentTypeError`, so a bad value ends the command at parse time with exit
code 2 and one line that names the option, the value and what is valid::

    curvbench overhead: error: argument --threads: must be an integer >= 1, got '0'

    parser.add_argument("--threads", type=options.int_at_least(1), default=2)
    parser.add_argument("--problems", nargs="+", type=options.one_of(problems.names(), "problem"))
    parser.add_argument("--device", type=options.device)

Checks that need the machine (is CUDA there?) run when the work starts, not at parse time, since
a SLURM submission from a login node may name a device the submitting host lacks:
:func:`require_device`.

A CLI helper: only command-line modules (``cli.py``, ``cli_*.py``, ``__main__.py``,
``bench/commands/``) import it, as only they import ``argparse`` (``tests/test_import_graph.py``).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

#: Device types the harness runs on (torch's ``mps``/``xpu`` are not supported: no test covers
#: them).
DEVICE_TYPES = ("cpu", "cuda")


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = name  # argparse quotes it only if a validator raises something else
    return fn


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """Parse an integer in ``[low, high]`` (``high=None``: no upper bound)."""
    what = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}")
        return value

    return _named(parse, f"integer {what}")


def float_in(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """Parse a finite float in the interval ``low..high`` (open ends where asked)."""
    left = f"> {low:g}" if low_open else f">= {low:g}"
    right = f"< {high:g}" if high_open else f"<= {high:g}"
    parts = [p for p, bound in ((left, low), (right, high)) if math.isfinite(bound)]
    what = "a number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return _named(parse, what)


#: Common cases.
positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)


def one_of(valid: Iterable[str], what: str = "name") -> Callable[[str], str]:
    """Accept a name from ``valid``; the error lists every valid name."""
    valid = tuple(valid)

    def parse(text: str) -> str:
        if text not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; valid: {', '.join(valid)}")
        return text

    return _named(parse, what)


_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (syntax only; see :func:`require_device`)."""
    if not _DEVICE.match(text) or text.startswith("cpu:"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; valid: cpu, cuda, cuda:N")
    return text


def require_device(name: str) -> None:
    """Raise :class:`DeviceUnavailable` unless ``name`` exists on this machine.

    Args:
        name: a device accepted by :func:`device`.

    """
    import torch

    dev = torch.device(name)
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device {name!r} requested but this machine has no CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceUnavailable(
            f"device {name!r} requested but this machine has {count} CUDA device(s) "
            f"(valid: {', '.join(f'cuda:{i}' for i in range(count))})"
        )


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist here (commands print it and exit 2)."""


def output_dir(text: str) -> Path:
    """Accept a folder to write into: it may not exist yet, but it may not be a file."""
    path = Path(text)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is not a folder ({parent} is a file)")
            break
    return path


def existing_dir(text: str) -> Path:
    """Accept a folder that exists."""
    path = Path(text)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {what}")
    return path


def one_of_listed(
    listed: Iterable[str], hidden: Iterable[str] = (), what: str = "name"
) -> Callable[[str], str]:
    """Like :func:`one_of`, but the names in ``hidden`` are accepted without being listed.

    For names meant for tests and smoke runs only (the tiny problems): the error lists what a
    user should pick.
    """
    listed, hidden = tuple(listed), tuple(hidden)

    def parse(text: str) -> str:
        if text not in listed and text not in hidden:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; valid: {', '.join(listed)}")
        return text

    return _named(parse, what)


_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_RST_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str | None:
    """Strip reStructuredText markup from a docstring for terminal help.

    ``:func:`name``` and ``:class:`~a.B``` become ``name`` / ``a.B``, double-backquoted literals
    lose their quotes; ``None`` stays ``None``.
    """
    if text is None:
        return None
    return _RST_LITERAL.sub(r"\1", _RST_ROLE.sub(r"\1", text))


def device_ok(name: str, prog: str) -> bool:
    """:func:`require_device`, reporting a missing device as one line on stderr.

    Returns ``False`` (after printing ``<prog>: error: <why>``) when ``name`` is not on this
    machine, so a command can ``return 2`` before it does any work.
    """
    import sys

    try:
        require_device(name)
    except DeviceUnavailable as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return False
    return True


def parse_on_device(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace | None:
    """Parse ``argv``; ``None`` (after one line on stderr) if its ``--device`` is not here.

    For the ``python -m`` tools whose ``main`` returns 2 before any work on a missing device.
    """
    args = parser.parse_args(argv)
    return args if device_ok(args.device, parser.prog) else None


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a usage error as one line (``prog: error: ...``), exit code 2.

    argparse prints the whole usage block first; for a bad value the one line naming the option,
    the value and the valid range is what a user needs (``--help`` still shows the usage).
    """
    import sys

    def error(message: str):
        print(f"{parser.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser
