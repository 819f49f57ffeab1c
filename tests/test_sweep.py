"""The sweep layer: grids, rows equal to the single commands, resume after a kill, sharding over
devices and processes, and a configuration's result independent of its chunk and its grid."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import jaxq.cli
from jaxq.sweep import expand, parse_values, run_sweep
from jaxq.sweep import results as sweep_results
from jaxq.sweep.experiment import load_experiment

QUEUE_BASE = {"jobs": "400", "replicas": "2", "capacity": "64"}
QUEUE_METRICS = ("mean_response_time", "stderr", "p99", "utilisation", "measured_jobs",
                 "overflow", "max_in_system", "bucket_mean_response_time")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table(folder):
    with open(os.path.join(folder, "results.csv")) as f:
        return f.read()


def _rows(folder):
    return sweep_results.load_table(folder)


def test_values_lists_and_ranges():
    assert parse_values("load", "0.5") == ["0.5"]
    assert parse_values("policy", "fcfs,sprpt") == ["fcfs", "sprpt"]
    assert parse_values("load", "0.5:0.9:3") == ["0.5", "0.7", "0.9"]
    assert parse_values("kv_capacity", "1000:3000:3") == ["1000", "2000", "3000"]
    assert parse_values("weights", "0,1,0,0;1,0,0,0", ";") == ["0,1,0,0", "1,0,0,0"]
    assert parse_values("trace", "run:1") == ["run:1"]  # not a range: kept as one value
    with pytest.raises(ValueError, match="--load: a range start:stop:num needs num"):
        parse_values("load", "0.5:0.9:0")
    with pytest.raises(ValueError, match="--policy: empty value"):
        parse_values("policy", "fcfs,,sprpt")


def test_grid_order_zip_and_points():
    points = expand({"policy": ["a", "b"], "load": ["1", "2"], "sigma": ["x", "y"]},
                    zipped=[["load", "sigma"]], points=[{"policy": "c"}], base={"jobs": "9"})
    assert points == [
        {"jobs": "9", "policy": "a", "load": "1", "sigma": "x"},
        {"jobs": "9", "policy": "a", "load": "2", "sigma": "y"},
        {"jobs": "9", "policy": "b", "load": "1", "sigma": "x"},
        {"jobs": "9", "policy": "b", "load": "2", "sigma": "y"},
        {"jobs": "9", "policy": "c"}]
    with pytest.raises(ValueError, match="zipped options need as many values"):
        expand({"load": ["1", "2"], "sigma": ["x"]}, zipped=[["load", "sigma"]])
    with pytest.raises(ValueError, match="zipped option 'c' is not an axis"):
        expand({"load": ["1"]}, zipped=[["load", "c"]])


def test_rows_equal_the_single_command(tmp_path, capsys):
    points = expand({"policy": ["fcfs", "sprpt"], "load": ["0.6", "0.8"]},
                    base={**QUEUE_BASE, "predictor": "lognormal", "sigma": "1.0", "seed": "4"})
    summary = run_sweep("queue", points, str(tmp_path), chunk_size=3, progress=False)
    assert (summary.configurations, summary.chunks, summary.chunks_run) == (4, 2, 2)
    rows = _rows(str(tmp_path))
    assert [r["config"] for r in rows] == [0, 1, 2, 3]
    for row in (rows[1], rows[2]):
        argv = ["queue", "--policy", row["policy"], "--load", str(row["load"]), "--jobs", "400",
                "--replicas", "2", "--capacity", "64", "--predictor", "lognormal", "--sigma",
                "1.0", "--seed", "4", "--json"]
        assert jaxq.cli.main(argv) == 0
        single = json.loads(capsys.readouterr().out)
        for name in QUEUE_METRICS:
            expected = single[name]
            got = row[name] if not isinstance(expected, list) else json.loads(row[name])
            assert got == pytest.approx(expected, rel=1e-12, nan_ok=True), name
        assert row["jobs"] == 400 and single["measured_jobs"] == 800


def test_result_depends_only_on_parameters_and_seed(tmp_path):
    # The same configuration alone, in a chunk of one, and inside a larger grid in a chunk of
    # five with other policies, loads and seeds around it: the same row.
    target = {**QUEUE_BASE, "policy": "sprpt", "load": "0.7", "seed": "3"}
    alone = tmp_path / "alone"
    run_sweep("queue", [target], str(alone), chunk_size=1, progress=False)
    grid = tmp_path / "grid"
    points = expand({"seed": ["1", "3"], "load": ["0.9", "0.7", "0.5"]},
                    base={**QUEUE_BASE, "policy": "sprpt"})
    run_sweep("queue", points, str(grid), chunk_size=5, progress=False)
    (a,) = _rows(str(alone))
    b = next(r for r in _rows(str(grid)) if r["seed"] == 3 and r["load"] == 0.7)
    for name in QUEUE_METRICS:
        assert a[name] == b[name], name


def test_resume_after_a_kill_gives_the_uninterrupted_table(tmp_path):
    options = ["--policy", "fcfs,spjf,sprpt", "--load", "0.5:0.9:3", "--jobs", "3000",
               "--replicas", "2", "--capacity", "64", "--predictor", "exponential"]
    points = expand({"policy": ["fcfs", "spjf", "sprpt"], "load": ["0.5", "0.7", "0.9"]},
                    base={"jobs": "3000", "replicas": "2", "capacity": "64",
                          "predictor": "exponential"})
    whole = tmp_path / "whole"
    run_sweep("queue", points, str(whole), chunk_size=1, progress=False)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxq.cli", "sweep", "queue", *options, "--chunk-size", "1",
         "--out", str(killed), "--json"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    chunks = killed / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if chunks.exists() and len([f for f in os.listdir(chunks) if f.endswith(".csv")]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [f for f in os.listdir(chunks) if f.endswith(".csv")]
    assert 2 <= len(done) < 9 and not (killed / "results.csv").exists()

    summary = run_sweep("queue", points, str(killed), chunk_size=1, progress=False)
    assert summary.chunks_reused == len(done) and summary.chunks_run == 9 - len(done)
    assert _table(str(killed)) == _table(str(whole))
    again = run_sweep("queue", points, str(killed), chunk_size=1, progress=False)
    assert again.chunks_run == 0 and _table(str(killed)) == _table(str(whole))


def test_parquet_holds_the_csv_table(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    points = expand({"policy": ["fcfs", "sprpt"]}, base={**QUEUE_BASE, "load": "0.5"})
    summary = run_sweep("queue", points, str(tmp_path), progress=False)
    assert "results.parquet" in summary.files
    table = pq.read_table(str(tmp_path / "results.parquet")).to_pylist()
    assert table == _rows(str(tmp_path))
    manifest = sweep_results.read_manifest(str(tmp_path))
    assert manifest["complete"] and manifest["configurations"] == 2
    assert manifest["seeds"] == [0] and manifest["jax_version"]


def test_bad_points_are_refused_before_running(tmp_path):
    with pytest.raises(ValueError, match=r"configuration 1 \(.*policy=nope.*\): .*policy"):
        run_sweep("queue", [{**QUEUE_BASE, "load": "0.5"},
                            {**QUEUE_BASE, "load": "0.5", "policy": "nope"}],
                  str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="unknown option 'lod'"):
        run_sweep("queue", [{"lod": "0.5"}], str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="--preemptive is a switch"):
        run_sweep("queue", [{"load": "0.5", "preemptive": "maybe"}], str(tmp_path),
                  progress=False)
    with pytest.raises(ValueError, match="load"):
        run_sweep("queue", [{"jobs": "10"}], str(tmp_path), progress=False)
    assert not (tmp_path / "chunks").exists()
    assert jaxq.cli.main(["sweep", "queue", "--load", "0.5,2", "--out", str(tmp_path)]) == 2


def test_llm_rows_equal_the_single_command(tmp_path, capsys):
    base = ["--workload", "azure-conversation", "--rate", "3", "--requests", "60",
            "--slots", "64", "--kv-capacity", "20000", "--predictor", "lognormal",
            "--sigma", "1.0"]
    assert jaxq.cli.main(["sweep", "llm", *base, "--policy", "fcfs,sprpt", "--preemption",
                          "recompute,swap", "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["configurations"] == 4 and summary["flagged"] == 0
    rows = _rows(str(tmp_path))
    row = rows[3]
    assert (row["policy"], row["preemption"]) == ("sprpt", "swap")
    assert jaxq.cli.main(["llm", *base, "--policy", "sprpt", "--preemption", "swap",
                          "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    for name in ("ttft_mean", "latency_p99", "preemptions", "completed", "peak_kv_tokens"):
        assert row[name] == pytest.approx(single[name], rel=1e-12), name
    assert row["kv_capacity"] == 20000 and row["iter_base"] == pytest.approx(single["iter_base"])


def test_llm_cluster_rows_equal_the_single_command(tmp_path, capsys):
    base = ["--workload", "azure-conversation", "--rate", "6", "--requests", "60",
            "--slots", "64", "--kv-capacity", "20000", "--instances", "3"]
    assert jaxq.cli.main(["sweep", "llm", *base, "--router", "round-robin,least-kv",
                          "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["configurations"] == 2 and summary["flagged"] == 0
    row = _rows(str(tmp_path))[1]
    assert row["router"] == "least-kv"
    assert jaxq.cli.main(["llm", *base, "--router", "least-kv", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    for name in ("ttft_mean", "latency_p99", "preemptions", "completed", "peak_kv_tokens"):
        assert row[name] == pytest.approx(single[name], rel=1e-12), name


def test_llm_disaggregated_rows_equal_the_single_command(tmp_path, capsys):
    # The link's bandwidth is a traced number: both points run in one stacked call.
    base = ["--workload", "azure-conversation", "--rate", "3", "--requests", "40",
            "--slots", "64", "--kv-capacity", "20000", "--prefill-instances", "1",
            "--decode-instances", "2"]
    assert jaxq.cli.main(["sweep", "llm", *base, "--kv-link-bandwidth", "0.05,25",
                          "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["configurations"] == 2 and summary["flagged"] == 0
    rows = _rows(str(tmp_path))
    assert rows[0]["latency_mean"] > rows[1]["latency_mean"]  # 2.6 ms against 5 us per token
    assert jaxq.cli.main(["llm", *base, "--kv-link-bandwidth", "0.05", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    for name in ("ttft_mean", "latency_p99", "preemptions", "completed", "peak_kv_tokens"):
        assert rows[0][name] == pytest.approx(single[name], rel=1e-12), name


def test_experiment_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent("""
        engine = "queue"
        title = "two policies"
        metrics = ["mean_response_time", "stderr"]
        zip = [["load", "seed"]]
        [options]
        jobs = 400
        replicas = 2
        [axes]
        policy = ["fcfs", "sprpt"]
        load = "0.5:0.7:2"
        seed = [1, 2]
        [[points]]
        policy = "srpt"
        load = 0.6
        preemptive = true
    """))
    experiment = load_experiment(str(path))
    assert [(p["policy"], p["load"], p.get("seed")) for p in experiment.points] == [
        ("fcfs", "0.5", "1"), ("fcfs", "0.7", "2"), ("sprpt", "0.5", "1"), ("sprpt", "0.7", "2"),
        ("srpt", "0.6", None)]
    out = tmp_path / "out"
    assert jaxq.cli.main(["run", str(path), "--out", str(out), "--json"]) == 0
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# two policies")
    assert "| policy | load | seed | preemptive | mean_response_time | stderr |" in summary
    assert len(summary.strip().splitlines()) == 4 + 5
    path.write_text('engine = "queue"\nloads = [1]\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_experiment(str(path))


_SUBPROCESS = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", {devices})
{distributed}
from jaxq.sweep import expand, run_sweep
points = expand({{"policy": ["fcfs", "sprpt"], {axis!r}: {values!r}}}, base={base!r})
summary = run_sweep({engine!r}, points, sys.argv[1], chunk_size={chunk}, progress=False)
print(json.dumps({{"devices": jax.local_device_count(), "run": summary.chunks_run}}))
"""


def _script(devices=1, chunk=6, engine="queue", base=QUEUE_BASE, distributed="",
            axis="load", values=("0.5", "0.7", "0.9")):
    return _SUBPROCESS.format(devices=devices, chunk=chunk, engine=engine, base=base,
                              distributed=distributed, axis=axis, values=list(values))


def test_sharded_over_devices_gives_the_same_table(tmp_path):
    # Three CPU devices, six configurations in chunks of 5 and 1 (padded to 6 and 3).
    one, three = tmp_path / "one", tmp_path / "three"
    for folder, devices in ((one, 1), (three, 3)):
        out = subprocess.run([sys.executable, "-c", _script(devices, chunk=5), str(folder)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout.splitlines()[-1])["devices"] == devices
    assert _table(str(three)) == _table(str(one))


@pytest.mark.slow
def test_llm_over_devices_gives_the_same_table(tmp_path):
    base = {"workload": "azure-conversation", "rate": "3", "requests": "40", "slots": "48",
            "kv_capacity": "12000", "replicas": "3", "predictor": "lognormal"}
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, devices in ((one, 1), (two, 2)):
        script = _script(devices, engine="llm", base=base, axis="sigma", values=("0.5", "1.5"))
        subprocess.run([sys.executable, "-c", script, str(folder)], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    assert _table(str(two)) == _table(str(one))


@pytest.mark.slow
def test_two_processes_give_the_same_table(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run([sys.executable, "-c", _script(chunk=2), str(single)], cwd=ROOT,
                   capture_output=True, text=True, check=True)
    processes = []
    for i in range(2):
        init = (f'jax.config.update("jax_cpu_collectives_implementation", "gloo")\n'
                f'jax.distributed.initialize("localhost:{port}", 2, {i})')
        processes.append(subprocess.Popen(
            [sys.executable, "-c", _script(chunk=2, distributed=init), str(multi)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[1][-2000:] for o in outputs]
    runs = [json.loads(o[0].splitlines()[-1])["run"] for o in outputs]
    assert runs == [2, 2]  # two policies (two groups) of three loads, in chunks of 2 and 1
    assert _table(str(multi)) == _table(str(single))


def test_progress_bar_line():
    import io

    from jaxq.sweep.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(chunks=4, configurations=400, enabled=True, stream=stream)
    bar.update(100, reused=True)
    bar.update(100)
    line = stream.getvalue().rsplit("\r", 1)[-1]
    assert line.startswith("[" + "#" * 12 + "." * 12 + "] 2/4 chunks, 200/400 configurations, ")
    assert line.endswith(" s left")
    quiet = io.StringIO()
    ProgressBar(chunks=1, configurations=1, enabled=False, stream=quiet).update(1)
    assert quiet.getvalue() == ""
