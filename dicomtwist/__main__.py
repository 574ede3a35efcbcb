"""``python -m dicomtwist COMMAND [options]``: the command-line tools.

* ``movescu``: the Move SCU (:mod:`dicomtwist.movescu`);
* ``qrscp``: the archive daemon, when :mod:`dicomtwist.tap` provides ``run``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

#: Command name -> (module, function) run with the remaining arguments.
COMMANDS: dict[str, tuple[str, str]] = {
    "movescu": ("dicomtwist.movescu", "run"),
    "qrscp": ("dicomtwist.tap", "run"),
}

_USAGE = "usage: python -m dicomtwist {" + ",".join(COMMANDS) + "} [options]\n"


def _entry_point(command: str) -> Callable[..., object] | None:
    """The ``run`` function of a command, or None if not available."""
    module_name, function = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return None
    return getattr(module, function, None)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch to a command; exits with the command's status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write(_USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"{_USAGE}unknown command {command!r}\n")
        sys.exit(2)
    run = _entry_point(command)
    if run is None:
        sys.stderr.write(f"{command} is not available in this installation\n")
        sys.exit(2)
    # Console-script style entry points read sys.argv themselves.
    sys.argv = [command, *rest]
    run()


if __name__ == "__main__":
    main()
