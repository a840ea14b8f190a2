"""`tinytlc diff`: a planned and a measured row per pass; the passes save memory."""

import json

from conftest import NETS

from tinytlc.pass_diff import steps
from tinytlc.passes.training import DEFAULT_PASSES, PASSES


def test_diff_rows_and_savings(cli):
    code, out, err = cli("diff", f"{NETS}:small_net", "--method", "bias", "--resolution", 48, "--steps", 1, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["step"] for r in rows] == [label for label, _, _ in steps()]
    assert len(rows) == 1 + len(DEFAULT_PASSES) + 1 + (len(PASSES) - len(DEFAULT_PASSES))
    for r in rows:
        assert r["planned_peak_bytes"] > 0 and r["step_peak_bytes"] > 0
    plain, compiled = rows[0], rows[1 + len(DEFAULT_PASSES)]
    assert compiled["passes"] == DEFAULT_PASSES and compiled["session"]
    assert compiled["planned_peak_bytes"] < plain["planned_peak_bytes"]
    assert compiled["step_peak_bytes"] < plain["step_peak_bytes"]
    # with the compiled session settings ORT frees each tensor at its last reader: the measured
    # peak is the planned one (plus small allocations the plan does not see)
    assert compiled["planned_peak_bytes"] <= compiled["step_peak_bytes"] < 1.5 * compiled["planned_peak_bytes"]


def test_unknown_pass(cli, tmp_path):
    code, _, err = cli("compile", f"{NETS}:tiny_net", "--method", "bias", "--passes", "frozen-conv,magic",
                       "--out", tmp_path / "o")
    assert code == 2 and "unknown pass 'magic'" in err and len(err.strip().splitlines()) == 1


def test_plan_sees_the_nodes_ort_adds(tmp_path):
    """ORT's optimizers add nodes (NCHWc reorders) that the artifact's file does not have; the plan
    must look every profiled node up in the graph the session ran, or it misses their tensors."""
    from tinytlc.pipeline import LEAN_SESSION, compile_model
    from tinytlc.runtime.plan import profile_step

    art = compile_model(f"{NETS}:small_net", "bias", tmp_path / "a", resolution=48, session=dict(LEAN_SESSION))
    events, model = profile_step(art.path, art.manifest)
    ran = [e["name"][: -len("_kernel_time")] for e in events]
    assert any(n.startswith("Reorder") for n in ran)  # the case this guards: ORT did add nodes
    assert set(ran) <= {n.name for n in model.graph.node}
