"""The participant graph is built and drawn without data (participant.init_example_wf)."""

import pytest

from dmrimc_bids.workflows.config import Config
from dmrimc_bids.workflows.participant import init_example_wf


@pytest.mark.parametrize("model, vascular, present, absent", [
    ("joint", True, {"fit_joint", "fit_ivim", "match_flow_dictionary"}, {"fit_histousim", "fit_spinflowsim"}),
    ("separate", True, {"fit_histousim", "fit_ivim", "fit_spinflowsim"}, {"fit_joint"}),
    ("separate", False, {"fit_histousim"}, {"fit_joint", "fit_ivim", "fit_spinflowsim"}),
])
def test_example_graph_is_built_and_drawn_without_data(tmp_path, model, vascular, present, absent):
    wf = init_example_wf(Config.from_dict(out_dir=str(tmp_path / "out")), tmp_path / "work", model, vascular)
    names = {n.split(".")[-1] for n in wf.list_node_names()}
    assert present <= names and not absent & names, sorted(names)
    dot = wf.write_graph(dotfilename=str(tmp_path / "graph.dot"), graph2use="colored", format="dot")
    text = open(dot).read()
    assert all(n in text for n in present) and "digraph" in text
    assert not (tmp_path / "out").exists()   # building and drawing write nothing else


@pytest.mark.parametrize("model", ["joint", "separate"])
def test_the_graph_is_built_from_the_plan_alone(single_demo, tmp_path, monkeypatch, model):
    """Plan once, then build (issue #40): with the session planned, building its graph reads no header, no
    metadata and no dictionary (each reader replaced by one that fails), and every sub-workflow has an inputnode
    and an outputnode."""
    from dmrimc_bids.bids.layout import collect_inputs
    from dmrimc_bids.workflows import plan as plan_module
    from dmrimc_bids.workflows.participant import init_participant_wf
    from dmrimc_bids.workflows.plan import plan_session
    item = collect_inputs(single_demo)[0]
    config = Config.from_dict(out_dir=str(tmp_path / "out"), model=model)
    plan = plan_session(item, config)

    def refuse(*args, **kwargs):
        raise AssertionError("the graph builders planned again")
    for name in ("session_protocol", "dwi_size", "load_selected", "session_protocols", "prepare_mask", "verify_image"):
        monkeypatch.setattr(plan_module, name, refuse)
    monkeypatch.setattr("dmrimc_bids.core.dictionary_default.load_selected", refuse)
    wf = init_participant_wf([plan], config, tmp_path / "work")
    session = wf.get_node(f"single_subject_{item.subject}_wf")
    subs = [session.get_node(n) for n in ("dwi_preproc_wf", "joint_wf" if model == "joint" else "tissue_wf",
                                          "histousim_derivatives_wf")]
    assert all(s.get_node("inputnode") is not None and s.get_node("outputnode") is not None for s in subs)
    assert session.get_node("dwi_preproc_wf").inputs.inputnode.dwi_files == item.dwi_files
