"""Cluster execution through Nipype's own plugins, on a real single-node SLURM (tests/slurm_cluster.py).

The participant workflow of the demo dataset and the simulators' dictionary workflows are run with
``--plugin SLURM`` (and SLURMGraph): every node must be a SLURM job that asks for the node's declared
memory and processors, and the results must equal those of a local run with the same seed.
"""

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dmrimc_bids.core.dictionary import Dictionary
from dmrimc_bids.core.errors import InputError
from dmrimc_bids.workflows import execution

pytestmark = pytest.mark.slurm


def _maps(out: Path, subject: str) -> dict:
    return {p.name: np.asanyarray(nib.load(p).dataobj) for p in sorted((out / f"sub-{subject}").rglob("*.nii.gz"))}


def _mb(text: str) -> int:
    """scontrol's memory ('1536M', '1G') in MB."""
    return int(float(text[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[text[-1]])


def _job_name(node) -> str:
    """The job name Nipype's SLURM plugin gives a node: its id first."""
    return node._id


@pytest.mark.slow
def test_participant_workflow_runs_as_slurm_jobs(slurm, demo_dir, demo_run, tmp_path):
    from dmrimc_bids.bids.layout import collect_inputs
    from dmrimc_bids.cli.run import main
    from dmrimc_bids.workflows.config import Config
    from dmrimc_bids.workflows.participant import init_participant_wf

    code, local_out, _ = demo_run
    assert code == 0
    out, work = tmp_path / "out", tmp_path / "work"
    before = {j["JobId"] for j in slurm.jobs()}
    seg = demo_dir / "derivatives" / "segmentation"
    code = main([str(demo_dir), str(out), "participant", "--participant-label", "01", "-w", str(work),
                 "--seed", "7", "--plugin", "slurm", "--plugin-args", '{"sbatch_args": "--time=30"}',
                 "--derivatives", str(seg)])
    assert code == 0
    # the same maps as the local (MultiProc) run with the same seed
    ours, local = _maps(out, "01"), _maps(local_out, "01")
    assert ours.keys() == local.keys() and len(ours) > 20
    for name in ours:
        np.testing.assert_array_equal(ours[name], local[name], err_msg=name)
    assert (out / "sub-01.html").is_file() and list((out / "logs").glob("*_status.tsv"))

    # every submitted node was a completed SLURM job asking for the node's declared memory and processors
    jobs = [j for j in slurm.jobs() if j["JobId"] not in before]
    assert jobs and all(j["JobState"] == "COMPLETED" for j in jobs), [(j["JobName"], j["JobState"]) for j in jobs]
    from dmrimc_bids.workflows.plan import plan_session
    config = Config.from_dict(out_dir=str(out), seed=7)
    wf = init_participant_wf([plan_session(i, config) for i in collect_inputs(demo_dir, [seg], participant_label=["01"])],
                             config, work)
    from nipype.interfaces.utility import IdentityInterface
    declared = {_job_name(n): n for n in wf._get_all_nodes()  # sub-workflows' input/outputnodes are flattened away
                if not n.run_without_submitting and not isinstance(n.interface, IdentityInterface)}
    by_node = {j["JobName"].split(".")[0]: j for j in jobs}
    assert set(by_node) == set(declared)
    for name, node in declared.items():
        job = by_node[name]
        assert _mb(job["MinMemoryNode"]) == math.ceil(node.mem_gb * 1024), name
        assert int(job["NumCPUs"]) == node.n_procs, name
        assert "--time=30" in Path(job["Command"]).read_text() or job["TimeLimit"] == "00:30:00"
    fit = by_node["fit_joint"]
    assert fit["MinMemoryNode"] != by_node["read_protocol"]["MinMemoryNode"]  # honest, not one size for all

    # the group level through the same plugin: one ROI-statistics job per subject/session, then the report
    before = {j["JobId"] for j in slurm.jobs()}
    assert main([str(demo_dir), str(out), "group", "--participant-label", "01", "-w", str(tmp_path / "gwork"),
                 "--plugin", "SLURM"]) == 0
    names = sorted(j["JobName"].split(".")[0] for j in slurm.jobs() if j["JobId"] not in before)
    assert names == ["group_report", "roi_statistics_01"]
    rows = (out / "group_histousim.tsv").read_text().splitlines()
    assert len(rows) > 1 and rows[1].startswith("sub-01") and (out / "group.html").is_file()


@pytest.mark.slow
def test_participant_graph_submission_then_collection(slurm, single_demo, tmp_path, capsys):
    """SLURMGraph submits the whole graph and returns; rerunning with the same work dir and a local plugin
    reuses every finished node and writes the status table."""
    from dmrimc_bids.cli.run import main
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(single_demo), str(out), "participant", "-w", str(work), "--seed", "7"]
    assert main(args + ["--plugin", "SLURMGraph"]) == 0
    assert "submitted 1 subject/session(s) to SLURMGraph" in capsys.readouterr().err
    slurm.wait_idle()
    assert (out / "sub-01.html").is_file() and not list((out / "logs").glob("*_status.tsv"))
    maps = _maps(out, "01")
    fits = {p: p.stat().st_mtime_ns for p in work.rglob("result_fit_*.pklz")}
    assert len(fits) == 2  # the joint fit (histousim, spinflowsim) and ivim
    assert main(args + ["--plugin", "Linear"]) == 0  # collects: no fit recomputed, nothing failed
    assert {p: p.stat().st_mtime_ns for p in work.rglob("result_fit_*.pklz")} == fits
    status = next((out / "logs").glob("*_status.tsv")).read_text().splitlines()
    assert status[1].split("\t")[:3] == ["sub-01", "n/a", "finished"]
    again = _maps(out, "01")  # the writers always run: same content, rewritten atomically
    assert again.keys() == maps.keys() and all(np.array_equal(again[k], maps[k], equal_nan=True) for k in maps)


def _flow_inputs(tmp_path):
    from dmrimc_bids.core.simulate.flow.generate import capillary_network
    (tmp_path / "net.json").write_text(json.dumps(capillary_network(3).to_json()))
    prot = tmp_path / "prot.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\t10\t30\n50\t10\t30\n100\t10\t30\n")
    return ["flow", "--network", str(tmp_path / "net.json"), "--qin", "5e-4", "2e-3", "4e-3",
            "--protocol", str(prot), "--spins", "300", "--seed", "2"]


def _histo_inputs(tmp_path):
    from .test_sim_cli import CELLS_SVG
    (tmp_path / "cells.svg").write_text(CELLS_SVG)
    prot = tmp_path / "histo.tsv"
    prot.write_text("b\tsmall_delta\tbig_delta\n0\t10\t20\n1000\t10\t20\n2000\t10\t20\n")
    return ["histo", "--svg", str(tmp_path / "cells.svg"), "--width-um", "50", "--protocol", str(prot),
            "--d0in", "1", "2", "--d0ex", "2", "--kappa", "0", "30", "--walkers", "200", "--seed", "3",
            "--device", "cpu"]


@pytest.mark.slow
def test_dictionary_workflows_run_as_slurm_jobs(slurm, tmp_path):
    """A small flow and a small Monte Carlo dictionary through SLURM (one job per chunk) and SLURMGraph
    (the whole graph submitted at once): equal to the local runs."""
    from dmrimc_bids.cli.sim import main as sim_main

    for kind, args, split in (("flow", _flow_inputs(tmp_path), ["--realisations-per-job", "1"]),
                              ("histo", _histo_inputs(tmp_path), ["--configs-per-job", "2"])):
        local = tmp_path / f"{kind}_local.npz"
        assert sim_main(args + ["--out", str(local)]) == 0
        before = {j["JobId"] for j in slurm.jobs()}
        remote = tmp_path / f"{kind}_slurm.npz"
        assert sim_main(args + split + ["--out", str(remote), "--plugin", "SLURM", "--threads-per-job", "2",
                                        "-w", str(tmp_path / f"work_{kind}")]) == 0
        np.testing.assert_array_equal(Dictionary.load(remote).signals, Dictionary.load(local).signals)
        jobs = [j for j in slurm.jobs() if j["JobId"] not in before]
        sims = [j for j in jobs if j["JobName"].startswith("_simulate")]
        # one job per chunk, the MapNode's collection of their results, and the assembly
        assert len(sims) == (3 if kind == "flow" else 2) and len(jobs) == len(sims) + 2
        assert all(j["JobState"] == "COMPLETED" and int(j["NumCPUs"]) == 2 for j in sims)

    # SLURMGraph returns once the jobs are submitted; the dictionary appears when the last one ends
    graph_out = tmp_path / "flow_graph.npz"
    assert sim_main(_flow_inputs(tmp_path) + ["--realisations-per-job", "2", "--out", str(graph_out),
                                              "--plugin", "SLURMGraph", "-w", str(tmp_path / "work_graph")]) == 0
    slurm.wait_idle()
    np.testing.assert_array_equal(Dictionary.load(graph_out).signals,
                                  Dictionary.load(tmp_path / "flow_local.npz").signals)


def test_plugin_choice_and_scheduler_requests(tmp_path):
    assert execution.choose(None, None, 1).plugin == "Linear"
    mp = execution.choose(None, {"maxtasksperchild": 1}, 4, mem_gb=6.0)
    assert (mp.plugin, mp.plugin_args["n_procs"], mp.plugin_args["memory_gb"]) == ("MultiProc", 4, 6.0)
    assert mp.plugin_args["maxtasksperchild"] == 1 and mp.local and mp.poll_s == execution.LOCAL_POLL_S
    assert execution.choose("slurmgraph", None, work_dir=tmp_path).submits_graph
    for plugin, args, work, text in (("Torque", None, tmp_path, "choose among"),
                                     ("SLURM", None, None, "-w/--work-dir")):
        with pytest.raises(InputError, match=text):
            execution.choose(plugin, args, work_dir=work)
    with pytest.raises(InputError, match="JSON object"):
        execution.parse_plugin_args("[1, 2]")
    f = tmp_path / "args.json"
    f.write_text('{"sbatch_args": "-p short"}')
    assert execution.parse_plugin_args(str(f)) == {"sbatch_args": "-p short"}
    # the node's needs become sbatch flags, unless the user set them; nothing for schedulers with no
    # portable spelling
    assert execution.scheduler_request("SLURM", 1.5, 2) == {"sbatch_args": " --mem=1536M --cpus-per-task=2"}
    assert execution.scheduler_request("SLURMGraph", 0.2, 1, "--mem=4G -p x") == {"sbatch_args": " --cpus-per-task=1"}
    assert execution.scheduler_request("SLURM", 1, 1, "--mem-per-cpu=2G -c 4") == {}
    assert execution.scheduler_request("SGE", 1, 1) == {}
