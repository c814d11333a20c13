"""Errors a user can cause, and how every command reports them: one clear line, non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int])


class UserError(Exception):
    """A problem the user can fix (bad config, missing daemon, unreachable database, ...).

    The message is printed as one line, without a traceback; put the fix in it where there is one.
    """

    exit_code = 2


def cli_entry(fn: F) -> F:
    """Wrap a command's `main` so that `UserError` becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # the reader went away (`selfinstruct db stats | head`): not an error worth a traceback;
            # point stdout at /dev/null so the interpreter's final flush does not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return wrapper  # type: ignore[return-value]
