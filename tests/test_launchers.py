"""Sweeps beyond one process, for real: submitit's local executor (the SLURM path without a cluster) and a
Ray cluster started and stopped here write the same records as the basic launcher, a killed job costs only
itself, and a resubmitted sweep runs only what is missing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ASSETS, requires_assets
from helpers import in_process

pytestmark = [requires_assets, pytest.mark.slow]
SWEEP = ["-m", "experiment=smoke", "trainer.num_threads=1", "trainer.progress=false"]
TIMING = ("finished_at", "wall_s", "load_s", "train_wall_s", "eval_wall_s", "train_examples_per_s")
TIMING += ("train_tokens_per_s", "train_padded_tokens_per_s", "peak_memory_mb")
# Ray on this host's loopback only: without the switch it resolves 127.0.0.1 to the host's routable address
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep(
    folder: Path, *overrides: str, wait: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess | subprocess.Popen:
    cache = str(folder / "cache")
    env = {**os.environ, "LORA_LAB_ASSETS": str(ASSETS), "LORA_LAB_CACHE": cache, **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "lora_lab.run", *overrides, f"results_dir={folder / 'results'}"]
    folder.mkdir(parents=True, exist_ok=True)
    if not wait:
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def records(folder: Path) -> dict[str, dict]:
    """Each complete record by name, without the fields that time the run or say where its files went."""
    out = {}
    for path in sorted((folder / "results" / "smoke" / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["status"] == "complete"
        del record["config"]["results_dir"], record["config"]["data"]["cache_dir"]
        out[path.stem] = {k: v for k, v in record.items() if k not in TIMING}
    return out


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> dict[str, dict]:
    """The records of the basic launcher, which runs the sweep's jobs in the `python -m lora_lab.run` process
    itself (here: in this one)."""
    folder = tmp_path_factory.mktemp("basic")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert in_process(folder, folder / "cache", monkeypatch, SWEEP) == 0
    return records(folder)


def test_submitit_local_writes_the_same_records_a_killed_job_costs_only_itself_and_a_rerun_finishes(
    tmp_path, basic
) -> None:
    """One job trains one epoch (the basic sweep's run), the other 100: once the short one's record is
    written, every job process still running is killed (the long one's), as a node failure or a scheduler's
    kill would, and the launcher with them (how a launcher reports a lost job is submitit's; not waiting for
    it saves its 15 s wait for the job's result). Resubmitted, the sweep skips the finished job and runs the
    other."""
    overrides = [*SWEEP, "trainer.epochs=1,100", "hydra/launcher=submitit_local"]
    launcher = sweep(tmp_path, *overrides, wait=False)
    runs = tmp_path / "results" / "smoke" / "runs"
    deadline = time.time() + 300
    while not list(runs.glob("*.json")) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    killed = [pid for pid in job_processes(launcher.pid) if not os.kill(pid, signal.SIGKILL)]
    launcher.kill()
    launcher.wait(timeout=300)
    assert killed
    assert len(basic) == 1 and records(tmp_path) == basic  # the short job's record, the long one's not
    rerun = sweep(tmp_path, *overrides)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    logs = "".join(p.read_text() for p in tmp_path.rglob("*_log.out"))
    assert logs.count("complete already, skipped") == 1
    assert len(records(tmp_path)) == 2 and not list(runs.glob("*.tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_cluster_runs_the_sweep_and_writes_the_same_records(tmp_path, basic) -> None:
    """Joins a cluster started here with `ray start --head`, as a user joins a running one."""
    ray = Path(sys.executable).with_name("ray")
    # the cluster's workers read the environment `ray start` had, as on a real cluster's nodes
    env = {
        **os.environ,
        **LOOPBACK_RAY,
        "LORA_LAB_ASSETS": str(ASSETS),
        "LORA_LAB_CACHE": str(tmp_path / "c"),
    }
    port = free_port()
    start = [str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    start.append("--include-dashboard=false")
    # workers start in `ray start`'s folder and write the jobs' multirun/ folders there
    subprocess.run(start, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    try:
        out = sweep(
            tmp_path,
            *SWEEP,
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.address=auto",  # the cluster `ray start` made on this host
            "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
            "+hydra.launcher.ray.init.object_store_memory=null",  # 1.2.2 passes it; a joined cluster refuses
            env=LOOPBACK_RAY,
        )
    finally:  # this cluster's processes only (`ray stop` stops every cluster on the host, and waits seconds)
        stop(cluster_processes(port))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert records(tmp_path) == basic


def process_table() -> dict[int, tuple[int, bytes]]:
    """Each process's parent and command line, read from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            table[int(stat.parent.name)] = (parent, (stat.parent / "cmdline").read_bytes())
        except OSError:
            continue
    return table


def below(roots: list[int], table: dict[int, tuple[int, bytes]]) -> list[int]:
    """Every process started by one of `roots`, or by one of those, and so on."""
    found, todo = [], list(roots)
    while todo:
        parent = todo.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        todo += children
    return found


def job_processes(root: int) -> list[int]:
    """submitit's job processes below `root`."""
    table = process_table()
    return [pid for pid in below([root], table) if b"submitit" in table[pid][1]]


def cluster_processes(port: int) -> list[int]:
    """The processes of the Ray cluster on `port`: those given its address or port (GCS, raylet, monitors),
    and what they started (agents, workers)."""
    table = process_table()
    marks = (f"127.0.0.1:{port}".encode(), f"port={port}".encode())
    named = [pid for pid, (_, cmd) in table.items() if any(m in cmd for m in marks)]
    return named + below(named, table)


def stop(pids: list[int]) -> None:
    """SIGKILL, as `ray stop --force` sends, and wait until each is gone."""
    assert pids, "no process of the cluster found to stop"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
