#!/usr/bin/env python3
"""Idle cost and crash repair of a local ring, measured from outside (issue 17).

Two measurements, each printing one JSON object per line on stdout:

  idle  Starts N overlay nodes (`overlay cluster up`, which returns once the ring is correct) and
        reads every node's CPU time (utime + stime from /proc/PID/stat) at the start and end of
        consecutive windows of --window seconds. With --opendht it then does the same with N
        OpenDHT nodes (`dhtnode -s`, node i bootstrapping from node 0), whose readiness cannot be
        asked: their windows start --opendht-settle seconds after the last one started.
        Figure: CPU milliseconds per node per second, per window.

  kill  Starts N overlay nodes, then --runs times: SIGKILLs one node (`overlay cluster kill`,
        never node 0, which the others bootstrap through), polls every live node's
        `GET /v1/status` every 100 ms until no live node names the dead one as its predecessor
        or in its successor list and every live node's successor and predecessor are right, and
        records the time; restarts the node and waits for a correct ring before the next run.

Run from the repository root after `cargo build --release`:

  python3 tests/scripts/idle_cost.py idle --nodes 64 --windows 2 --opendht
  python3 tests/scripts/idle_cost.py kill --nodes 16 --runs 5

Every wait has a deadline; the cluster (and the dhtnodes) are stopped at the end, also on
errors. Only loopback addresses are used.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based) of the full line.
    return int(fields[11]) + int(fields[12])


def measure_windows(pids, windows, seconds):
    """CPU ms per process per second in each of `windows` consecutive windows."""
    figures = []
    before = {pid: cpu_ticks(pid) for pid in pids}
    for _ in range(windows):
        start = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        after = {pid: cpu_ticks(pid) for pid in pids}
        alive = [pid for pid in pids if before[pid] is not None and after[pid] is not None]
        if len(alive) != len(pids):
            raise RuntimeError(f"{len(pids) - len(alive)} of {len(pids)} processes exited while measured")
        ticks = sum(after[pid] - before[pid] for pid in alive)
        figures.append(round(ticks * 1000.0 / TICKS / len(alive) / elapsed, 3))
        before = after
    return figures


class Cluster:
    """An `overlay cluster` in a temporary directory."""

    def __init__(self, bin_dir, nodes):
        self.overlay = os.path.join(bin_dir, "overlay")
        self.dir = tempfile.mkdtemp(prefix="overlay-idle-")
        self.nodes = nodes

    def run(self, *args, timeout=300):
        out = subprocess.run(
            [self.overlay, "--dir", self.dir, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"overlay {' '.join(args)} failed: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def up(self):
        self.run("cluster", "up", "-n", str(self.nodes), "--fresh", timeout=600)
        return self.status()

    def status(self):
        return json.loads(self.run("--json", "cluster", "status"))["nodes"]

    def down(self):
        try:
            self.run("cluster", "down", timeout=120)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def node_status(http, timeout=1.0):
    url = http if http.startswith("http") else f"http://{http}"
    with urllib.request.urlopen(f"{url}/v1/status", timeout=timeout) as reply:
        return json.load(reply)


def repaired(statuses, dead_peer):
    """Whether no status names `dead_peer` and every successor and predecessor is right."""
    ring = sorted(statuses, key=lambda s: s["ring_id"])
    for i, status in enumerate(ring):
        named = [n["peer_id"] for n in status["successors"]]
        if status.get("predecessor"):
            named.append(status["predecessor"]["peer_id"])
        if dead_peer in named:
            return False
        successor = status["successors"][0]["peer_id"] if status["successors"] else None
        predecessor = status["predecessor"]["peer_id"] if status.get("predecessor") else None
        if successor != ring[(i + 1) % len(ring)]["peer_id"]:
            return False
        if predecessor != ring[(i - 1) % len(ring)]["peer_id"]:
            return False
    return True


def idle(args):
    results = []
    cluster = Cluster(args.bin, args.nodes)
    try:
        formed = time.monotonic()
        nodes = cluster.up()
        pids = [n["pid"] for n in nodes]
        print(f"overlay: {len(pids)} nodes in a correct ring after {time.monotonic() - formed:.1f} s", file=sys.stderr)
        figures = measure_windows(pids, args.windows, args.window)
        results.append({"impl": "overlay", "nodes": len(pids), "window_s": args.window, "cpu_ms_per_node_per_s": figures})
        print(json.dumps(results[-1]), flush=True)
    finally:
        cluster.down()
    if args.opendht:
        if shutil.which("dhtnode") is None:
            raise RuntimeError("dhtnode is not installed (apt-get install dhtnode)")
        procs = []
        try:
            for i in range(args.nodes):
                cmd = ["dhtnode", "-s", "-p", str(args.opendht_port + i)]
                if i > 0:
                    cmd += ["-b", f"127.0.0.1:{args.opendht_port}"]
                procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            time.sleep(args.opendht_settle)
            figures = measure_windows([p.pid for p in procs], args.windows, args.window)
            results.append(
                {"impl": "opendht", "nodes": len(procs), "window_s": args.window, "cpu_ms_per_node_per_s": figures}
            )
            print(json.dumps(results[-1]), flush=True)
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait(timeout=30)


def kill(args):
    rng = random.Random(args.seed)
    cluster = Cluster(args.bin, args.nodes)
    try:
        nodes = cluster.up()
        for run in range(args.runs):
            time.sleep(args.settle)  # let maintenance back off, as in a quiet ring
            nodes = cluster.status()
            victim = rng.randrange(1, len(nodes))
            dead_peer = node_status(nodes[victim]["http"])["peer_id"]
            live = [n["http"] for i, n in enumerate(nodes) if i != victim]
            killed = time.monotonic()
            cluster.run("cluster", "kill", str(victim))
            deadline = killed + args.deadline
            seconds = None
            while time.monotonic() < deadline:
                try:
                    statuses = [node_status(http) for http in live]
                except OSError:
                    statuses = None
                if statuses is not None and repaired(statuses, dead_peer):
                    seconds = round(time.monotonic() - killed, 2)
                    break
                time.sleep(0.1)
            print(json.dumps({"run": run + 1, "nodes": len(nodes), "killed": victim, "repaired_s": seconds}), flush=True)
            cluster.run("cluster", "start", str(victim), timeout=300)
    finally:
        cluster.down()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/release", help="directory holding overlay and overlay-node")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("idle")
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--window", type=float, default=30.0, help="seconds per window")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--opendht", action="store_true", help="measure N dhtnode processes as well")
    p.add_argument("--opendht-port", type=int, default=46000)
    p.add_argument("--opendht-settle", type=float, default=20.0)
    p = sub.add_parser("kill")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--settle", type=float, default=20.0, help="quiet seconds before each kill")
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    {"idle": idle, "kill": kill}[args.command](args)


if __name__ == "__main__":
    main()
