"""Running the participant level for a Config: preflight every subject/session, build and run the graph,
find out which subjects failed, finish their reports, and write the run's records (config, status,
dataset_description.json, CITATION.md). One failing subject never stops the others."""

from __future__ import annotations

import json
import os
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..core.errors import InputError
from . import execution
from .config import Config

LOG = logging.getLogger("dmrimc-bids")


def new_run_id() -> str:
    """<date>-<time>_<pid>: the id of a run (its logs, its config, where it retires earlier maps)."""
    return time.strftime("%Y%m%d-%H%M%S") + f"_{os.getpid()}"


def default_cache_dir(work) -> str:
    """Where simulated dictionaries are cached when --sim-cache-dir is not given: beside the graph."""
    return str(Path(work) / "dictionary_cache")


def work_folder(config: Config) -> tuple[Path, Path | None]:
    """(the run's work folder, the temporary one made for it when -w was not given: None otherwise); the
    temporary one is removed after a successful run (and at exit after an interrupted one)."""
    tmp_work = None if config.execution.work_dir else Path(tempfile.mkdtemp(prefix="dmrimc_work_"))
    if tmp_work is not None:
        execution.TEMPORARY_DIRS.append(tmp_work)
    return Path(config.execution.work_dir or tmp_work).resolve(), tmp_work


def run_participants(config: Config, run_with: execution.Execution, run_id: str) -> int:
    """The participant level: exit code 0 when every requested subject/session finished. The run's Config is
    settled first (batch size, dataset links, work folder, dictionary cache), then every session is planned
    once (plan.plan_session, the preflight), then the graph is built from the plans and run."""
    _check_device(config)
    if config.execution.mem_gb:
        from .plan import chunk_for_memory
        procs = max(1, config.execution.nprocs // max(1, config.execution.omp_nthreads))
        config = config.replace(chunk_size=chunk_for_memory(config.execution.mem_gb / procs,
                                                            config.execution.chunk_size))
        LOG.info("--mem %.3g GB: fitting batches of at most %d voxels", config.execution.mem_gb,
                 config.execution.chunk_size)
    items, dictionary = _collect(config)
    from ..bids.provenance import dataset_links
    config = config.replace(dataset_links=dataset_links(config.run.bids_dir, config.inputs.derivatives))
    work, tmp_work = work_folder(config)
    if not config.execution.sim_cache_dir:
        config = config.replace(sim_cache_dir=default_cache_dir(work))
    plans, failed = [], []
    for item in items:
        try:
            plans.append(_preflight(item, config, dictionary))
        except InputError as exc:
            print(f"dmrimc-bids: error: {item.label}: {exc}", file=sys.stderr)
            failed.append((item, exc.exit_code, "preflight", str(exc)))
    if not plans:
        if tmp_work is not None:
            shutil.rmtree(tmp_work, ignore_errors=True)
        return _report_status(config, items, failed, run_id, wrote_status=False)
    ok = [plan.item for plan in plans]
    remove_stale_temps(config.run.out_dir)
    _retire(config, ok, run_id)
    config.write(run_id)   # every option settled: the config written is the config used
    _write_dataset_records(config, [], run_id, ok)   # first: an interrupted run leaves a valid derivatives folder
    _record_interruptions(config, items, failed, run_id)
    result = execute(plans, config, run_with, run_id, work=(work, tmp_work))
    execution.INTERRUPT["hooks"].clear()
    if result is None:
        _write_dataset_records(config, [], run_id, ok)
        print(f"dmrimc-bids: submitted {len(ok)} subject/session(s) to {run_with.plugin} (work dir "
              f"{config.execution.work_dir}); maps and reports appear as the jobs finish. To collect the status, "
              "rerun the same command with --plugin Linear once they have: finished nodes are reused", file=sys.stderr)
        return 1 if failed else 0
    failed += result["failed"]
    if len(failed) < len(items):
        _write_dataset_records(config, result["fragments"], run_id, ok)
    return _report_status(config, items, failed, run_id, wrote_status=True)


def _retire(config: Config, items, run_id: str) -> None:
    """This run owns its subjects' outputs: their earlier maps move to logs/previous/<run_id>/."""
    from ..bids.derivatives import retire_outputs
    for item in items:
        moved = retire_outputs(config.run.out_dir, item.subject, item.session, run_id)
        if moved:
            LOG.info("%s: moved %d map/sidecar file(s) of an earlier run to %s", item.label, len(moved),
                     Path(config.run.out_dir) / "logs" / "previous" / run_id)


#: The models whose exitcode maps count failed voxels (status table, terminal summary).
EXITCODE_MODELS = ("histousim", "ivim", "spinflowsim")


def failed_voxels(config: Config, item) -> dict:
    """{model: (failed, fitted)} voxels of a session's written exitcode maps (failed: exit code -1, NaN or
    non-positive data inside the mask; fitted: exit code 1 or -1)."""
    import numpy as np

    from ..bids.derivatives import map_path, read_map
    out = {}
    for model in EXITCODE_MODELS:
        f = map_path(config.run.out_dir, item.subject, item.session, model, "exitcode", space=item.space)
        if f.is_file():
            ec = read_map(f)[0]
            ran = np.isin(ec, (1, -1))   # 0 and NaN background, 2 not fitted on purpose (no vascular signal)
            out[model] = (int((ec[ran] == -1).sum()), int(ran.sum()))
    return out


def describe_failed_voxels(counts: dict) -> str:
    """'histousim 1/392, spinflowsim 1/392' (failed/fitted per model), or '0' when none failed."""
    bad = [f"{m} {n}/{of}" for m, (n, of) in counts.items() if n]
    return ", ".join(bad) if bad else "0"


def _check_device(config: Config) -> None:
    if config.execution.device == "gpu":
        from ..core.fitting import gpu
        if not gpu.available():
            raise InputError("--device gpu: no CUDA GPU is visible", exit_code=64,
                             fix="use --device cpu (or auto), or install the [gpu] extra on a machine with a GPU")


def _collect(config: Config):
    """(session inputs, the selected dictionary) of the run; InputError when none can be found."""
    from ..bids.layout import collect_inputs, load_filters
    from ..core.dictionary import Dictionary
    from ..core.dictionary_default import load_selected
    from ..core.simulate.flow.network import read_network

    if config.vascular.flow_dictionary:  # fail early on an unreadable flow dictionary or an unknown parameter
        Dictionary.load(config.vascular.flow_dictionary).select(config.vascular.flow_params or None)
    for f in config.vascular.flow_networks:
        read_network(f)
    dictionary = load_selected(config.tissue.dictionary, config.tissue.params, config.tissue.fix)
    for name in config.tissue.bounds:
        if name not in dictionary.names:
            raise InputError(f"--bounds names unknown parameter {name!r}", exit_code=64,
                             fix=f"choose among {', '.join(dictionary.names)}")
    from ..options import DEFAULT_POINT_PRIOR
    for name in config.tissue.point_prior:
        if name not in dictionary.names and name not in DEFAULT_POINT_PRIOR:
            raise InputError(f"--point-prior names unknown parameter {name!r}", exit_code=64,
                             fix=f"choose among {', '.join(dictionary.names)}")
    filters = load_filters(config.inputs.bids_filter_file) if config.inputs.bids_filter_file else None
    items = collect_inputs(Path(config.run.bids_dir), [Path(d) for d in config.inputs.derivatives] or None,
                           config.inputs.participant_label or None, config.inputs.session_label or None, filters,
                           validate=not config.inputs.skip_bids_validation, mask_label=config.inputs.mask_label or None,
                           mask_file=Path(config.inputs.mask) if config.inputs.mask else None,
                           sigma_file=Path(config.inputs.noise_map) if config.inputs.noise_map else None)
    _check_timing_keys(config, items)
    return items, dictionary


def _check_timing_keys(config: Config, items) -> None:
    """A --timing key that matches no DWI of the run is a typo: one usage error rather than a silent no-op."""
    from ..bids.protocol import run_timing_for
    from ..bids.protocol import original_files
    timing = config.run_timing()
    if not timing:
        return
    files = {f for item in items for f in item.dwi_files}  # and the source runs of preprocessed series
    files |= {f for item in items for r in item.runs if r.confounds for f in original_files(r.confounds)}
    for key, value in timing.items():
        if not any(run_timing_for(f, {key: value}) for f in files):
            raise InputError(f"--timing {key}: matches no DWI file of the selected subjects/sessions", exit_code=64,
                             fix="give an entity of the DWI file names (e.g. run-2, acq-long) or a file name")


def _record_interruptions(config: Config, items, failed, run_id: str) -> None:
    """Ctrl-C from here on: the status table marks the unfinished subjects/sessions "interrupted", and the
    line printed says what the run leaves and how to go on."""
    resume = (f"a rerun with the same -w ({config.execution.work_dir}) resumes" if config.execution.work_dir else
              "the run's temporary work dir is removed, so a rerun starts again (-w DIR makes runs resumable)")
    execution.INTERRUPT["message"] = (f"maps already written stay in {config.run.out_dir}, the status table in "
                                      f"logs/{run_id}_status.tsv; {resume}")
    started = time.time() - 1.0

    def record():
        from ..bids.derivatives import write_status
        bad = {id(f[0]): f for f in failed}
        rows = []
        for i in items:
            report = Path(config.run.out_dir) / f"sub-{i.subject}.html"
            done = report.is_file() and report.stat().st_mtime >= started
            rows.append(_status_row(i, bad.get(id(i)), interrupted=not done))
        write_status(config.run.out_dir, run_id, rows)

    def clean():
        # the workers are stopped and this process exits next: their half-written files go
        from ..core.atomic import remove_stale_temps as remove
        remove(config.run.out_dir, ended_pids=[os.getpid()])
    execution.INTERRUPT["hooks"] += [record, clean]


def _preflight(item, config: Config, dictionary):
    """The session's plan (plan.plan_session: InputError on bad input), its warnings and summary logged."""
    from .plan import plan_session
    plan = plan_session(item, config, dictionary)
    for w in plan.warnings:
        LOG.warning("%s: warning: %s", item.label, w)
    LOG.info("%s: %s", item.label, plan.summary())
    return plan


def _write_dataset_records(config: Config, fragments: list, run_id: str, items=()) -> None:
    """dataset_description.json (this run among every run into the folder) and, with the sessions' report
    fragments, the run's methods text (logs/<run_id>_CITATION.md, and logs/CITATION.md for the latest)."""
    from ..bids.derivatives import write_dataset_description
    from ..reports.subject import write_citation
    subjects = sorted({f"sub-{i.subject}" + (f"_ses-{i.session}" if i.session else "") for i in items})
    write_dataset_description(config.run.out_dir, config.run.bids_dir, config.execution.seed, config.run.command,
                              config.run.dataset_links or None,
                              run={"id": run_id, "options": config.options_fingerprint(), "subjects": subjects})
    if fragments:
        write_citation(config.run.out_dir, fragments, config.report_options(), run_id)
    write_run_options(config)


def write_run_options(config: Config) -> None:
    """logs/options/<fingerprint>.json: the options behind a run's fingerprint (the group level names the
    options in which pooled runs differ), written atomically."""
    from ..core.atomic import write_bytes as atomic_write_bytes
    path = Path(config.run.out_dir) / "logs" / "options" / f"{config.options_fingerprint()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(config.result_options(), indent=1, sort_keys=True).encode())


def _status_row(item, failure=None, failed_voxels: str = "n/a", interrupted: bool = False) -> dict:
    """One row of logs/<run>_status.tsv. failure: (item, exit code, stage, message) or None."""
    if failure is not None:
        status, code, stage, message = "failed", failure[1], failure[2], failure[3]
    elif interrupted:
        status, code, stage, message = "interrupted", 130, "interrupted", "interrupted (Ctrl-C)"
    else:
        status, code, stage, message = "finished", 0, "report", ""
    return {"participant_id": f"sub-{item.subject}", "session_id": f"ses-{item.session}" if item.session else "n/a",
            "status": status, "exit_code": code, "stage": stage, "failed_voxels": failed_voxels, "message": message}


def _report_status(config: Config, items, failed, run_id: str, wrote_status: bool) -> int:
    """logs/<run>_status.tsv (when anything ran), one summary line; the exit code."""
    from ..bids.derivatives import write_status
    bad = {id(f[0]): f for f in failed}
    voxels = ({id(i): describe_failed_voxels(failed_voxels(config, i)) for i in items if id(i) not in bad}
              if wrote_status else {})
    rows = [_status_row(i, bad.get(id(i)), voxels.get(id(i), "n/a")) for i in items]
    for i in items:
        if id(i) not in bad and voxels.get(id(i), "0") != "0":
            print(f"dmrimc-bids: warning: {i.label}: failed voxels (failed/fitted) {voxels[id(i)]}: NaN, zero or "
                  "non-finite data inside the mask; exit code -1 in the exitcode maps, parameters NaN",
                  file=sys.stderr)
    status = "stderr"
    if wrote_status:  # a run that started nothing (every subject refused at preflight) leaves no file behind
        status = write_status(config.run.out_dir, run_id, rows)
        LOG.info("status of each subject/session: %s", status)
    if failed:
        print(f"dmrimc-bids: {len(failed)} of {len(items)} subject/session(s) failed: "
              + ", ".join(f[0].label for f in failed) + f" (see {status})", file=sys.stderr)
        return failed[0][1] if len(failed) == len(items) else 1
    LOG.info("dmrimc-bids: finished %d subject/session(s) -> %s", len(items), config.run.out_dir)
    return 0


def remove_stale_temps(out_dir) -> None:
    from ..core.atomic import remove_stale_temps as remove
    removed = remove(out_dir)
    if removed:
        LOG.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out_dir)


def execute(plans, config: Config, run_with: execution.Execution, run_id: str = "run",
            work: tuple | None = None) -> dict | None:
    """Run the graph: {"failed": [(item, exit code, stage, message)], "fragments": the finished sessions'
    report fragments}, or None when a graph plugin only submitted it. work: (folder, temporary folder or None)
    of work_folder(); config.execution.sim_cache_dir must be settled (run_participants does both)."""
    from . import nipype_logging
    from .participant import init_participant_wf

    work, tmp_work = work if work is not None else work_folder(config)
    if not config.execution.sim_cache_dir:
        raise ValueError("config.execution.sim_cache_dir must be set before the run (default_cache_dir)")
    execution.configure(run_with, work)
    nipype_logging.route(config.execution.verbose, Path(config.run.out_dir) / "logs" / f"{run_id}_nipype.log")
    wf = init_participant_wf(plans, config, work)
    items = [plan.item for plan in plans]
    crash_dir = work / "crash"
    before = set(crash_dir.glob("crash-*.txt")) if crash_dir.is_dir() else set()
    t0, started = time.perf_counter(), time.time() - 1.0  # 1 s of slack for coarse file-system clocks
    display = ProgressDisplay(work) if run_with.local and run_with.plugin == "MultiProc" else None
    try:
        if execution.run(wf, run_with) is None:
            return None
    except RuntimeError as exc:  # some node failed; we find out which subjects below
        LOG.debug("workflow: %s", exc)
    finally:
        if display is not None:
            display.close()
    LOG.info("workflow finished in %.1f s", time.perf_counter() - t0)
    crashes = sorted(set(crash_dir.glob("crash-*.txt")) - before) if crash_dir.is_dir() else []
    failed = _failures(items, config, crashes, work / wf.name, started)
    fragments = [f for f in (_fragment(work / wf.name, i) for i in items) if f is not None]
    if tmp_work is not None and not failed:  # keep the crash files of a failed run
        shutil.rmtree(tmp_work, ignore_errors=True)
    elif tmp_work is not None:
        print(f"dmrimc-bids: the temporary work folder is kept for its crash files: {tmp_work} (delete it when "
              "done; -w DIR puts the work folder where you choose)", file=sys.stderr)
    return {"failed": failed, "fragments": fragments}


class ProgressDisplay:
    """One progress bar for a run whose nodes work in parallel processes: the sum of the fitting nodes'
    progress files (interfaces/progress.py) in <work>/.dmrimc_progress, redrawn by a thread of this process."""

    TITLES = {"vox": "fits", "network": "flow dictionaries"}

    def __init__(self, work: Path, every_s: float = 0.5):
        import threading

        from ..interfaces.progress import PROGRESS_FOLDER
        self.folder = Path(work) / PROGRESS_FOLDER
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.every_s, self.bars = every_s, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _draw(self) -> None:
        from tqdm import tqdm

        from ..interfaces.progress import read_progress
        by_unit: dict = {}
        for s in read_progress(self.folder):
            by_unit.setdefault(s["unit"], []).append(s)
        for unit, states in by_unit.items():   # one line per kind of work: fits (voxels), flow dictionaries
            total, done = sum(s["total"] for s in states), sum(min(s["n"], s["total"]) for s in states)
            running = sum(not s["done"] for s in states)
            if unit not in self.bars:
                self.bars[unit] = tqdm(total=total, unit=unit, mininterval=self.every_s, position=len(self.bars),
                                       desc=self.TITLES.get(unit, unit))
            bar = self.bars[unit]
            bar.total = total
            bar.set_description(f"{self.TITLES.get(unit, unit)} ({running} running, {len(states)} started)",
                                refresh=False)
            bar.update(done - bar.n)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._draw()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._draw()
        for bar in self.bars.values():
            bar.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _failures(items, config: Config, crashes, wf_dir: Path, started: float) -> list:
    from ..bids.derivatives import map_path
    broken, failed = {}, []
    for item in items:
        reason = _crash_reason(crashes, item)
        exitcode = map_path(config.run.out_dir, item.subject, item.session, "histousim", "exitcode", space=item.space)
        if reason or not exitcode.is_file():
            broken[id(item)] = reason or "no maps were written"
            continue
        over = [(m, n, of) for m, (n, of) in failed_voxels(config, item).items()
                if n / max(1, of) > config.execution.max_failed_fraction]
        if over:
            broken[id(item)] = ("the fit failed in " + ", ".join(f"{100 * n / max(1, of):.0f} % of the {m} voxels "
                                                                 f"({n}/{of})" for m, n, of in over)
                                + f" (exit code -1: NaN or non-positive data), above --max-failed-fraction "
                                  f"{config.execution.max_failed_fraction:g}; check the DWI for damaged or unscaled volumes")
    _partial_reports(items, broken, config, wf_dir)
    for item in items:
        report = Path(config.run.out_dir) / f"sub-{item.subject}.html"
        if id(item) in broken:
            reason = broken[id(item)]
            print(f"dmrimc-bids: error: {item.label}: processing failed: {reason}", file=sys.stderr)
            failed.append((item, 1, "workflow", reason))
        elif not report.is_file() or report.stat().st_mtime < started:  # an old report is not this run's
            reason = _crash_reason(crashes, item, f"subject_report_{item.subject}")
            print(f"dmrimc-bids: error: {item.label}: the report failed{': ' + reason if reason else ''}",
                  file=sys.stderr)
            failed.append((item, 1, "report", reason or "no report was written"))
    return failed


def _fragment(wf_dir: Path, item) -> dict | None:
    from .participant import subject_wf_name
    frag = wf_dir / subject_wf_name(item) / "session_report" / "fragment.json"
    return json.loads(frag.read_text()) if frag.is_file() else None


def _partial_reports(items, broken: dict, config: Config, wf_dir: Path) -> None:
    """A subject with a failed session gets its report all the same (the graph skips the report node
    downstream of a failure): the SubjectReport interface run on the finished sessions' fragments plus
    one section per failed session."""
    from ..interfaces.reports import SubjectReport
    by_subject: dict = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    for subject, its in by_subject.items():
        if not any(id(i) in broken for i in its) or all(id(i) in broken for i in its):
            continue
        frags = []
        for i in its:
            frag = None if id(i) in broken else _fragment(wf_dir, i)
            frags.append(frag or {"session": i.session or "", "title": f"ses-{i.session}" if i.session else i.label,
                                  "n_volumes": 0, "n_mask": 0, "shells": [], "models": [],
                                  "warnings": [f"processing failed: {broken.get(id(i), 'no report fragment')}"]})
        folder = Path(tempfile.mkdtemp(prefix="dmrimc_report_"))
        files = []
        for k, frag in enumerate(frags):
            files.append(str(folder / f"fragment_{k}.json"))
            Path(files[-1]).write_text(json.dumps(frag))
        SubjectReport(out_dir=config.run.out_dir, subject=subject, fragments=files,
                      options=config.report_options()).run(cwd=str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def _crash_reason(crash_files, item, tag=None) -> str:
    from .participant import subject_wf_name
    tag = tag or subject_wf_name(item)
    for f in crash_files:
        text = f.read_text(errors="replace")
        if tag in text or tag in f.name:
            for line in reversed(text.splitlines()):
                if "InputError" in line or "Error" in line:
                    return line.split(":", 1)[-1].strip() + f" (crash file {f})"
            return f"see {f}"
    return ""
