"""How a graph runs: one of Nipype's execution plugins, on this machine or through a cluster's scheduler.

We never schedule anything ourselves. This module picks the plugin from the command line (``--plugin``,
``--plugin-args``, ``--nprocs``, ``--mem``), sets Nipype's execution options for it, and turns every
node's declared needs (``mem_gb``, ``n_procs``) into scheduler requests where Nipype leaves that to us
(SLURM: ``--mem`` and ``--cpus-per-task`` per job), so the scheduler packs jobs as the nodes need.

Plugin kinds:

* local (Linear, MultiProc, LegacyMultiProc): nodes run on this machine; MultiProc schedules them within
  ``n_procs`` processors and ``memory_gb``;
* batch (SLURM, SGE, PBS, LSF, Condor, OAR): each node is one job; this process waits for them;
* graph (SLURMGraph, SGEGraph, PBSGraph, CondorDAGMan): the whole graph is submitted at once with job
  dependencies and this process returns at once; a later run with the same work dir collects the results.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import EX_USAGE, InputError

LOCAL_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc")
BATCH_PLUGINS = ("SLURM", "SGE", "PBS", "LSF", "Condor", "OAR")
GRAPH_PLUGINS = ("SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan")
PLUGINS = LOCAL_PLUGINS + BATCH_PLUGINS + GRAPH_PLUGINS

#: Scheduler poll interval [s]. The scheduler submits one level of the graph per poll, so Nipype's 2 s
#: default would dominate a demo-sized local run; on a cluster every poll queries the scheduler per job.
LOCAL_POLL_S = 0.05
CLUSTER_POLL_S = 2.0


@dataclass
class Execution:
    """A chosen plugin, its arguments and the Nipype config that goes with it."""
    plugin: str
    plugin_args: dict = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.plugin in LOCAL_PLUGINS

    @property
    def submits_graph(self) -> bool:
        """True when ``run`` returns as soon as the jobs are submitted (the results come later)."""
        return self.plugin in GRAPH_PLUGINS

    @property
    def poll_s(self) -> float:
        return LOCAL_POLL_S if self.local else CLUSTER_POLL_S


def parse_plugin_args(text: str | None) -> dict:
    """``--plugin-args``: a JSON object, inline or in a file."""
    if not text:
        return {}
    source = Path(text)
    try:
        value = json.loads(source.read_text() if source.is_file() else text)
    except (OSError, ValueError) as exc:
        raise InputError(f"--plugin-args {text!r} is neither a JSON object nor a readable JSON file ({exc})",
                         exit_code=EX_USAGE,
                         fix="""give e.g. --plugin-args '{"sbatch_args": "--partition=short --time=02:00:00"}'""") from None
    if not isinstance(value, dict):
        raise InputError(f"--plugin-args {text!r} is not a JSON object", exit_code=EX_USAGE,
                         fix="""give e.g. --plugin-args '{"sbatch_args": "--partition=short"}'""")
    return value


def choose(plugin: str | None, plugin_args: dict | None, nprocs: int = 1, mem_gb: float | None = None,
           work_dir=None) -> Execution:
    """The plugin for ``--plugin``/``--plugin-args``/``--nprocs``/``--mem`` (names are case-insensitive).

    Without ``--plugin``: Linear for one process, MultiProc otherwise. A cluster plugin needs a work dir
    the compute nodes can read (``-w`` on a shared file system): the jobs run from it.
    """
    args = dict(plugin_args or {})
    if plugin is None:
        plugin = "MultiProc" if nprocs > 1 else "Linear"
    canonical = {p.lower(): p for p in PLUGINS}
    name = canonical.get(plugin.lower())
    if name is None:
        raise InputError(f"--plugin {plugin}: not a Nipype execution plugin we support", exit_code=EX_USAGE,
                         fix=f"choose among {', '.join(PLUGINS)}")
    if name in ("MultiProc", "LegacyMultiProc"):
        # forkserver: workers never inherit numba's thread pool from a parent that already ran kernels
        defaults = {"n_procs": nprocs, "raise_insufficient": False}
        if name == "MultiProc":
            defaults["mp_context"] = "forkserver"
        if mem_gb:
            defaults["memory_gb"] = mem_gb
        args = {**defaults, **args}
    if name in GRAPH_PLUGINS and name != "CondorDAGMan":
        # a resubmission skips the nodes already finished in the work dir, as local reruns do (and
        # Nipype's SLURMGraph needs the key: without plugin_args it fails on the missing attribute)
        args = {"dont_resubmit_completed_jobs": True, **args}
    if name not in LOCAL_PLUGINS and work_dir is None:
        raise InputError(f"--plugin {name} runs each node as a job from the work dir, and none was given",
                         exit_code=EX_USAGE,
                         fix="give -w/--work-dir on a file system the compute nodes share (not /tmp)")
    return Execution(name, args)


def configure(execution: Execution, work_dir: Path) -> None:
    """Nipype's execution config for this plugin (crash files as text in ``work_dir/crash``)."""
    from nipype import config as ncfg
    ncfg.update_config({"execution": {"crashdump_dir": str(Path(work_dir) / "crash"), "crashfile_format": "txt",
                                      "stop_on_first_crash": False, "remove_unnecessary_outputs": False,
                                      "poll_sleep_duration": execution.poll_s},
                        "monitoring": {"enabled": False}})
    if not execution.local:
        # Nipype's batch plugins name jobs after $LOGNAME, which containers and cron jobs often lack
        os.environ.setdefault("LOGNAME", _user())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "dmrimc"


def scheduler_request(plugin: str, mem_gb: float, n_procs: int, user_args: str = "") -> dict:
    """Node-level plugin_args asking the scheduler for what the node declares.

    SLURM and SLURMGraph: ``--mem=<MB>M --cpus-per-task=<n>``, each unless the user's ``sbatch_args``
    already set it. Other schedulers have no portable spelling (SGE's memory and parallel-environment
    names are site settings): their jobs get only the user's ``qsub_args``/``bsub_args``.
    """
    if plugin not in ("SLURM", "SLURMGraph"):
        return {}
    given = shlex.split(user_args or "")
    flags = []
    if not any(a.startswith(("--mem", "--mem-per-cpu", "--mem-per-gpu")) for a in given):
        flags.append(f"--mem={max(1, math.ceil(mem_gb * 1024))}M")
    if not any(a.startswith(("--cpus-per-task", "-c")) for a in given):
        flags.append(f"--cpus-per-task={max(1, int(n_procs))}")
    # SLURMGraph joins the node's arguments to the plugin's without a space
    return {"sbatch_args": " " + " ".join(flags)} if flags else {}


def declare_resources(wf, execution: Execution) -> int:
    """Give every node of ``wf`` the scheduler request for its mem_gb/n_procs; returns the nodes changed."""
    user_args = execution.plugin_args.get("sbatch_args", "")
    changed = 0
    for node in wf._get_all_nodes():
        request = scheduler_request(execution.plugin, node.mem_gb, node.n_procs, user_args)
        if request:
            node.plugin_args = {**request, **(node.plugin_args or {})}
            changed += 1
    return changed


def run(wf, execution: Execution):
    """Run ``wf`` with the plugin: the execution graph, or None when the plugin only submitted it."""
    declare_resources(wf, execution)
    if INTERRUPT.get("console") and execution.plugin == "MultiProc":   # once the run's environment is set
        workers_ignore_interrupt()
    graph = wf.run(plugin=execution.plugin, plugin_args=execution.plugin_args)
    return None if execution.submits_graph else graph


def descendants(pid: int | None = None) -> list[int]:
    """Process ids of every descendant of ``pid`` (this process), from /proc (Linux; [] elsewhere)."""
    pid = os.getpid() if pid is None else pid
    children: dict = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_children(grace_s: float = 3.0) -> int:
    """Stop every process this one started (MultiProc's forkserver and its workers, simulation jobs):
    SIGTERM, then SIGKILL for those still alive after ``grace_s``, and a wait of at most ``grace_s`` until they
    have ended (so that what they leave can be cleaned up). Returns how many were signalled."""
    import logging
    import signal
    import time
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)  # the pool's "broken" callbacks: expected
    tracker = b"from multiprocessing.resource_tracker import"  # it cleans up after the others: left to exit
    procs = [p for p in descendants() if tracker not in _cmdline(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in procs):
            time.sleep(0.05)
    return len(procs)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


#: Temporary folders of this process (work dirs made for one run): removed on Ctrl-C too.
TEMPORARY_DIRS: list = []
#: Set by a run once it knows them: "message", what an interrupted run leaves (the Ctrl-C line, instead of the
#: entry point's generic one), and "hooks", callables that record the interruption (e.g. the status table).
INTERRUPT: dict = {"message": None, "hooks": [], "console": False}


def on_interrupt(prog: str, what: str) -> str:
    """Stop every worker, run the interruption hooks (each at most once; errors ignored) and return the
    one line to print."""
    stop_children()
    while INTERRUPT["hooks"]:
        hook = INTERRUPT["hooks"].pop(0)
        try:
            hook()
        except Exception:  # noqa: BLE001 - recording an interruption must not mask it
            pass
    return f"{prog}: interrupted (Ctrl-C): {INTERRUPT['message'] or what}"


def exit_on_interrupt(prog: str, what: str) -> None:
    """Make Ctrl-C (SIGINT) stop the whole run at once: every worker process stopped, this process's temporary
    folders removed, one line printed, exit code 130. Nipype turns a KeyboardInterrupt inside a node into a
    node failure and goes on with the next node, so the handler exits instead of raising. For the command-line
    entry points only (not when the CLI's main() is called from Python)."""
    import shutil
    import signal
    import sys

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the clean-up
        line = on_interrupt(prog, what)
        for d in TEMPORARY_DIRS:
            shutil.rmtree(d, ignore_errors=True)
        print(f"\n{line}", file=sys.stderr, flush=True)
        os._exit(130)
    INTERRUPT["console"] = True   # execution.run starts MultiProc's forkserver with SIGINT ignored
    signal.signal(signal.SIGINT, handler)


def workers_ignore_interrupt() -> None:
    """Start multiprocessing's forkserver (MultiProc's workers are forked from it) with SIGINT ignored: Ctrl-C
    reaches the terminal's whole process group, and workers that took it printed a KeyboardInterrupt traceback
    each (some 40 lines) before this process stopped them. A process started with SIGINT ignored keeps it
    ignored (Python installs its handler only where SIGINT is not ignored), and the forkserver hands that on to
    every worker; this process alone handles Ctrl-C."""
    import multiprocessing.forkserver
    import signal
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
