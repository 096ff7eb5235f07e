"""`dmrimc-bids bids_dir out_dir participant|group`: the BIDS App (parser: cli/parser.py; what runs:
workflows/runner.py and workflows/group.py)."""

from __future__ import annotations

import logging
import sys

from . import quiet_environment
from ..core.errors import InputError
from .parser import build_parser, config_from_args


#: The Ctrl-C line before a run knows more (workflows/runner.py then says what that run leaves).
INTERRUPTED = "nothing was written"


def main(argv=None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    if argv is None:  # the console command: Ctrl-C stops every worker and exits at once
        from ..workflows.execution import exit_on_interrupt
        exit_on_interrupt("dmrimc-bids", INTERRUPTED)
    logging.basicConfig(level=logging.INFO if args.verbose == 0 else logging.DEBUG, format="%(message)s",
                        stream=sys.stderr)
    logging.getLogger("bidsschematools").setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        return run(config_from_args(args))
    except InputError as exc:
        print(f"dmrimc-bids: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return interrupted("dmrimc-bids", INTERRUPTED)


def interrupted(prog: str, what: str) -> int:
    """Ctrl-C: stop every worker process, record the interruption, print one line, exit code 130."""
    from ..workflows.execution import on_interrupt
    print(on_interrupt(prog, what), file=sys.stderr)
    return 130


def run(config) -> int:
    """Run one analysis level of a validated Config; the BIDS-Apps exit code."""
    from ..workflows import execution
    ex = config.execution
    run_with = execution.choose(ex.plugin or None, ex.plugin_args, ex.nprocs, ex.mem_gb,
                                ex.work_dir or None)  # an unknown plugin fails here, before any output
    if config.run.analysis_level == "group":
        from ..workflows.group import run_group
        return run_group(config, run_with)
    from ..workflows.runner import new_run_id, run_participants
    return run_participants(config, run_with, new_run_id())


if __name__ == "__main__":
    sys.exit(main())
