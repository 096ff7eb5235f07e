"""One exception type for every problem caused by the user's input.

Each error names the offending file (when there is one), what is wrong and how to fix it, so the
CLI can print it as a single line and exit with the code of the draft BIDS-Apps output spec
(64 usage, 65 data error, 66 missing input, 73 an output that cannot be created)."""

from __future__ import annotations

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class InputError(Exception):
    """Bad input: ``path: problem. Fix: fix`` on one line, with a process exit code."""

    def __init__(self, problem: str, *, path=None, fix: str | None = None, exit_code: int = EX_DATAERR):
        self.problem = problem.rstrip(".")
        self.path = None if path is None else str(path)
        self.fix = fix
        self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.fix:
            msg += f". Fix: {self.fix}"
        return " ".join(msg.split())  # always one line
