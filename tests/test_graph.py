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
