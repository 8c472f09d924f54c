#!/usr/bin/env python3
"""DM latency on 8 local release nodes (issue 12): alice sends through node 1, bob listens at node 3.

Latency = when bob's `overlay chat listen --json` printed the DM (wall clock) minus the envelope's
`ts` (set by alice's CLI when it seals it): the HTTP post, the node's checks (signature, name
record, replay), the presence lookup, the hop over /overlay/chat/1 and the event stream.
Run after `cargo build --release`:  python3 tests/scripts/dm_latency.py [N]   (default 200)."""
import json, os, subprocess, sys, time, threading, shutil
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
O = os.path.join(ROOT, "target/release/overlay")
NODE = os.path.join(ROOT, "target/release/overlay-node")
D = "/tmp/dmlat"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
shutil.rmtree(D, ignore_errors=True); os.makedirs(D)
for k in ("/tmp/dmlat-alice", "/tmp/dmlat-bob"): shutil.rmtree(k, ignore_errors=True)
subprocess.run([O, "cluster", "up", "-n", "8", "--fresh", "--dir", D, "--node-bin", NODE], check=True, stdout=subprocess.DEVNULL)
st = json.loads(subprocess.run([O, "cluster", "status", "--dir", D, "--json"], check=True, capture_output=True).stdout)
nodes = st["nodes"] if isinstance(st, dict) and "nodes" in st else st
urls = [n.get("http") or n.get("url") for n in nodes]
urls = [u if u.startswith("http") else "http://" + u for u in urls]
A = [O, "--node", urls[1], "chat", "--keys", "/tmp/dmlat-alice"]
B = [O, "--node", urls[3], "chat", "--keys", "/tmp/dmlat-bob"]
subprocess.run(A + ["register", "alice"], check=True, stdout=subprocess.DEVNULL)
subprocess.run(B + ["register", "bob"], check=True, stdout=subprocess.DEVNULL)
listener = subprocess.Popen(B + ["listen", "--as", "bob", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
arrivals = {}
def read():
    for line in listener.stdout:
        t = time.time()
        try: m = json.loads(line)
        except Exception: continue
        if m.get("kind") == "dm": arrivals[m["body"]] = (t, m["ts"])
threading.Thread(target=read, daemon=True).start()
deadline = time.time() + 30
while time.time() < deadline:
    out = subprocess.run(A + ["who", "bob"], capture_output=True, text=True).stdout
    if "online" in out: break
    time.sleep(0.2)
outcomes = {}
for i in range(N):
    r = subprocess.run(A + ["send", "bob", f"m{i}", "--as", "alice"], capture_output=True, text=True)
    outcomes[r.stdout.strip()] = outcomes.get(r.stdout.strip(), 0) + 1
deadline = time.time() + 20
while len(arrivals) < N and time.time() < deadline: time.sleep(0.1)
lat = sorted((t - ts / 1000.0) * 1000.0 for (t, ts) in arrivals.values())
def pct(p): return lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"sent {N}, outcomes {outcomes}, arrived {len(arrivals)} (distinct bodies)")
if lat: print(f"latency ms: p50 {pct(0.5):.2f}  p95 {pct(0.95):.2f}  p99 {pct(0.99):.2f}  max {lat[-1]:.2f}")
listener.kill()
subprocess.run([O, "cluster", "down", "--dir", D], stdout=subprocess.DEVNULL)
