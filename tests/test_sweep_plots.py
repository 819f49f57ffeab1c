"""Plots of a results folder: the standard plots, exact theory on line plots, averaging over
repeated points, heatmaps, and readable errors for bad specs."""

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import jaxq.cli  # noqa: E402
from jaxq import theory  # noqa: E402
from jaxq.sweep import expand, results, run_sweep  # noqa: E402
from jaxq.sweep.plots import (cdf_lines, check_specs, default_specs, heatmap_grid,  # noqa: E402
                              plot_folder, series, theory_curve)

PNG = b"\x89PNG\r\n\x1a\n"
LOADS = [0.5, 0.7]


@pytest.fixture(scope="module")
def queue_folder(tmp_path_factory):
    """fcfs and sprpt at two loads, each with seeds 0 and 1: 8 configurations."""
    out = str(tmp_path_factory.mktemp("sweep"))
    points = expand({"policy": ["fcfs", "sprpt"], "load": [str(v) for v in LOADS],
                     "seed": ["0", "1"]}, base={"jobs": "300", "replicas": "2"})
    run_sweep("queue", points, out, progress=False)
    return out


@pytest.fixture
def folder(queue_folder, tmp_path):
    """A private copy of the queue folder's table and manifest (no plots yet)."""
    out = str(tmp_path / "copy")
    for name in (results.TABLE, results.MANIFEST):
        with open(os.path.join(queue_folder, name), "rb") as f:
            results.write_atomic(os.path.join(out, name), f.read())
    return out


@pytest.fixture
def llm_folder(tmp_path):
    """A hand-written LLM results folder: two policies at three rates on two GPUs (whose preset
    sets kv_capacity), one seed each."""
    out = str(tmp_path / "llm")
    rows = []
    for gpu, kv in (("rtx-4090", 30000), ("h100", 300000)):
        for policy in ("fcfs", "sprpt"):
            for rate in (1.0, 2.0, 4.0):
                latency = rate * (2.0 if policy == "fcfs" else 1.5) * (1 if kv > 50000 else 2)
                rows.append({"config": len(rows), "policy": policy, "rate": rate, "gpu": gpu,
                             "kv_capacity": kv, "seed": 0, "ttft_mean": latency / 10,
                             "ttft_stderr": 0.01, "latency_mean": latency,
                             "latency_stderr": 0.1})
    results.write_atomic(os.path.join(out, results.TABLE), results.rows_to_csv(list(rows[0]), rows))
    results.write_manifest(out, {"engine": "llm", "complete": True})
    return out


def _check_files(paths):
    assert paths and all(os.path.exists(p) for p in paths)
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        assert data.startswith(PNG) if path.endswith(".png") else b"<svg" in data


def test_default_plots(folder):
    rows = results.load_table(folder)
    assert default_specs("queue", rows) == [{"kind": "lines", "x": "load",
                                             "y": "mean_response_time", "by": ["policy"],
                                             "theory": True}]
    paths = plot_folder(folder)
    stem = os.path.join(folder, "plots", "mean_response_time_vs_load_by_policy")
    assert paths == [stem + ".png", stem + ".svg"]
    _check_files(paths)
    with open(stem + ".svg", "rb") as f:
        first = f.read()
    plot_folder(folder)
    with open(stem + ".svg", "rb") as f:
        assert f.read() == first  # no dates, fixed ids: equal plots, equal files
    assert not [n for n in os.listdir(os.path.dirname(stem)) if n.endswith(".tmp")]


def test_default_specs_pick_axes(queue_folder):
    """threshold lines mark the optimum; two numeric axes add a heatmap per other combination."""
    rows = results.load_table(queue_folder)
    onebit = [dict(r, policy="onebit", threshold=[0.5, 1.0][r["seed"]]) for r in rows]
    specs = default_specs("queue", onebit)
    assert [(s["kind"], s["x"], s.get("by"), s.get("optimum")) for s in specs[:2]] == [
        ("lines", "load", ["threshold"], None), ("lines", "threshold", ["load"], True)]
    assert specs[2:] == [{"kind": "heatmap", "x": "load", "y": "threshold",
                          "z": "mean_response_time"}]
    grid = [dict(r, sigma=[0.5, 1.0][r["seed"]]) for r in rows]
    heatmaps = [s for s in default_specs("queue", grid) if s["kind"] == "heatmap"]
    assert [s["where"] for s in heatmaps] == [{"policy": "fcfs"}, {"policy": "sprpt"}]
    single = [r for r in rows if r["config"] == 0]
    assert default_specs("queue", single)[0]["x"] == "config"


def test_theory_curve_equals_exact_theory(queue_folder):
    rows = results.load_table(queue_folder)
    models = {"fcfs": jaxq.FCFS(), "sprpt": jaxq.SPRPT()}
    for policy, model in models.items():
        xs, values = theory_curve([r for r in rows if r["policy"] == policy], "load")
        assert xs == LOADS
        expected = [theory.mean_response_time(model, jaxq.Exponential(1.0), jaxq.Perfect(), v)
                    for v in LOADS]
        np.testing.assert_allclose(values, expected, rtol=1e-12)
    assert theory_curve([r for r in rows if r["policy"] == "fcfs"], "load")[1] == pytest.approx(
        [1 + v / (1 - v) for v in LOADS])  # M/M/1: E[T] = 1 / (1 - load)
    beyond = [dict(r, load=1.2) if r["load"] == 0.7 else r for r in rows]
    xs, values = theory_curve(beyond, "load")  # load >= 1: no stationary mean
    assert xs == [0.5, 1.2] and np.isfinite(values[0]) and np.isnan(values[1])
    assert theory_curve([dict(r, arrival_cv=2.0) for r in rows], "load") is None
    assert theory_curve([dict(r, policy="linear") for r in rows], "load") is None


def test_lines_average_repeated_points(queue_folder):
    rows = results.load_table(queue_folder)
    lines = series(rows, "load", "mean_response_time", ["policy"])
    assert [s.label for s in lines] == ["policy=fcfs", "policy=sprpt"]
    for s in lines:
        assert s.x == LOADS and np.isnan(s.err).all()  # two seeds a point: no error bars
        for load, y in zip(s.x, s.y):
            same = [r["mean_response_time"] for r in s.rows if r["load"] == load]
            assert len(same) == 2 and y == pytest.approx(np.mean(same), rel=1e-12)
    one_seed = [r for r in rows if r["seed"] == 0]
    for s in series(one_seed, "load", "mean_response_time", ["policy"]):
        np.testing.assert_allclose(s.err, [1.96 * r["stderr"] for r in s.rows])
    shuffled = [dict(r, load=v) for r, v in zip(one_seed[:3], [0.9, 0.3, 0.6])]
    assert series(shuffled, "load", "p99")[0].x == [0.3, 0.6, 0.9]


def test_lines_spec_with_theory_optimum_and_where(folder):
    specs = [{"kind": "lines", "x": "load", "y": "mean_response_time", "by": "policy",
              "theory": True, "optimum": True, "logy": True, "where": {"seed": 0},
              "title": "M/M/1", "name": "mm1"},
             {"kind": "lines", "x": "policy", "y": "p99", "by": ["load"]}]
    paths = plot_folder(folder, specs)
    assert [os.path.basename(p) for p in paths] == [
        "mm1.png", "mm1.svg", "p99_vs_policy_by_load.png", "p99_vs_policy_by_load.svg"]
    _check_files(paths)


def test_heatmap(folder):
    rows = results.load_table(folder)
    xs, ys, grid = heatmap_grid(rows[1:], "load", "policy", "mean_response_time")
    assert xs == LOADS and ys == ["fcfs", "sprpt"] and grid.shape == (2, 2)
    # rows[0] (fcfs, 0.5, seed 0) is left out: that cell is seed 1's value alone.
    assert grid[0, 0] == rows[1]["mean_response_time"]
    assert grid[1, 1] == pytest.approx(np.mean([r["mean_response_time"] for r in rows[-2:]]))
    missing = heatmap_grid([r for r in rows if r["policy"] != "sprpt" or r["load"] != 0.7],
                           "load", "policy", "p99")[2]
    assert np.isnan(missing[1, 1]) and np.isfinite(missing[[0, 0, 1], [0, 1, 0]]).all()
    paths = plot_folder(folder, [{"kind": "heatmap", "x": "load", "y": "policy", "z": "p99",
                                  "logz": True}])
    assert os.path.basename(paths[0]) == "p99_over_load_policy.png"
    _check_files(paths)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "bars", "x": "load", "y": "p99"}, r"plots\[1\]: kind must be one of lines, "
                                                r"heatmap, cdf, got 'bars'"),
    ({"kind": "lines", "x": "load", "y": "p99", "colour": "red"},
     r"plots\[1\] \(lines\): unknown key\(s\) colour; the keys of a lines plot: kind, x, y, by"),
    ({"kind": "lines", "x": "lod", "y": "p99"},
     r"x = 'lod' is not a column of the results; columns: config, policy, .*, load, .*, p99"),
    ({"kind": "lines", "x": "load", "y": "p99", "by": ["policy", "polcy"]},
     r"by = 'polcy' is not a column"),
    ({"kind": "heatmap", "x": "load", "y": "policy"}, r"\(heatmap\): needs z"),
    ({"kind": "lines", "x": "load", "y": "policy"}, r"'policy' holds no numbers"),
    ({"kind": "lines", "x": "load", "y": "p99", "theory": True}, r"it needs y = "
                                                                 r"'mean_response_time'"),
    ({"kind": "lines", "x": "load", "y": "p99", "logy": "yes"}, r"logy must be true or false"),
    ({"kind": "lines", "x": "load", "y": "p99", "where": {"policy": "srpt"}},
     r"where policy = 'srpt' matches no row; policy takes fcfs, sprpt"),
    ({"kind": "lines", "x": "load", "y": "p99", "name": "../up"}, r"name must be a file stem"),
    ({"kind": "lines", "x": "load", "y": "mean_response_time", "by": "policy"},
     r"several plots are named mean_response_time_vs_load_by_policy"),
])
def test_spec_errors_before_drawing(folder, spec, message):
    good = {"kind": "lines", "x": "load", "y": "mean_response_time", "by": "policy"}
    with pytest.raises(ValueError, match=message):
        plot_folder(folder, [good, spec])
    assert not os.path.exists(os.path.join(folder, "plots"))  # nothing drawn


def test_theory_lines_of_the_cost(folder):
    # cost = E[T] + the mean prediction cost (0 here): an experiment file may ask for its exact
    # curve as for the mean response time
    paths = plot_folder(folder, [{"kind": "lines", "x": "load", "y": "cost", "by": "policy",
                                  "theory": True}])
    _check_files(paths)


def test_llm_folder(llm_folder):
    rows = results.load_table(llm_folder)
    # kv_capacity follows the GPU preset: not a line of its own.
    assert [(s["x"], s["y"], s["by"]) for s in default_specs("llm", rows)] == [
        ("rate", "latency_mean", ["policy", "gpu"]), ("rate", "ttft_mean", ["policy", "gpu"])]
    lines = series(rows, "rate", "latency_mean", ["policy", "gpu"])
    np.testing.assert_allclose(lines[0].err, [1.96 * 0.1] * 3)
    _check_files(plot_folder(llm_folder))
    with pytest.raises(ValueError, match=r"theory is exact for the queue engine only; this "
                                         r"folder's engine is llm"):
        check_specs([{"kind": "lines", "x": "rate", "y": "latency_mean", "theory": True}],
                    "llm", rows)


def test_llm_latency_cdf(tmp_path):
    # A real LLM sweep: its latency.npz holds each configuration's measured requests, whose mean
    # is the table's latency_mean, and the standard plots include their CDF.
    out = str(tmp_path)
    points = expand({"policy": ["fcfs", "sprpt"]},
                    base={"workload": "azure-conversation", "rate": "3", "requests": "40",
                          "slots": "48", "replicas": "2", "kv_capacity": "12000"})
    run_sweep("llm", points, out, progress=False)
    rows = results.load_table(out)
    latencies = results.load_latencies(out)
    assert sorted(latencies) == [0, 1]
    for r in rows:
        values = latencies[r["config"]]
        assert values.shape == (2 * 36,)  # replicas x (requests - 10% warm-up)
        assert np.mean(values) == pytest.approx(r["latency_mean"], rel=1e-5)
    (label, values), _ = cdf_lines(rows, ["policy"], latencies)
    assert label == "policy=fcfs" and np.all(np.diff(values) >= 0)
    paths = plot_folder(out)
    assert any(os.path.basename(p) == "latency_cdf_by_policy.png" for p in paths)
    _check_files(paths)
    with pytest.raises(ValueError, match="latency CDFs are of the LLM engine's requests"):
        check_specs([{"kind": "cdf"}], "queue", rows)


def test_missing_matplotlib(folder, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ValueError, match=r"plots need matplotlib: pip install 'jaxq\[plot\]'"):
        plot_folder(folder)


def test_not_a_results_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a results folder"):
        plot_folder(str(tmp_path))


def test_plot_command(folder, capsys):
    assert jaxq.cli.main(["plot", folder, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["plots"]) == 2 and all(os.path.exists(p) for p in out["plots"])

