#!/usr/bin/env python3
"""S3 transfer benchmark: emflow's client against s5cmd, rclone and the aws cli, on one local S3 server
(scripts/s3-server), side by side in one run. Cases: one 1 GiB object up and down, 1000 x 64 KiB
objects up and down. Client files live in /dev/shm so the disk is not measured. Prints MB/s (median of
N runs), the ratio of emflow to the fastest peer, the CPU seconds each client spends per GiB and its
peak resident set (the largest of the runs).

usage: bench_s3.py EMFLOW_BINARY STATE_ENV [RUNS]
S3_BENCH_PEERS (default "s5cmd rclone aws") names the peers to run, for a machine that lacks one."""
import os, shutil, statistics, subprocess, sys, time

emflow, state = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
peers = os.environ.get("S3_BENCH_PEERS", "s5cmd rclone aws").split()
if unknown := [p for p in peers if p not in ("s5cmd", "rclone", "aws")]:
    raise SystemExit(f"S3_BENCH_PEERS: unknown peer(s) {' '.join(unknown)}; choose among s5cmd rclone aws")
tools = ["emflow"] + peers
venv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin")
env = dict(os.environ)
for line in open(state):
    k, _, v = line.strip().partition("=")
    if k: env[k] = v
endpoint = env["S3_ENDPOINT"]
env.update({"AWS_ENDPOINT_URL": endpoint, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"})
env.pop("AWS_CA_BUNDLE", None)  # rclone 1.60 fails when it is set
env.update({"RCLONE_CONFIG_B_TYPE": "s3", "RCLONE_CONFIG_B_PROVIDER": "Other", "RCLONE_CONFIG_B_ENDPOINT": endpoint,
            "RCLONE_CONFIG_B_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"], "RCLONE_CONFIG_B_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_B_REGION": "us-east-1"})

shm = "/dev/shm/emflow-bench-s3"
shutil.rmtree(shm, ignore_errors=True)
os.makedirs(shm + "/small")
big = shm + "/big.bin"
with open(big, "wb") as f:
    for _ in range(64): f.write(os.urandom(16 << 20))
for i in range(1000):
    with open(f"{shm}/small/f{i:04d}.bin", "wb") as f: f.write(os.urandom(64 << 10))
GiB, small_bytes = 1 << 30, 1000 * (64 << 10)

def run(cmd):
    """wall seconds, CPU seconds and peak resident set (MB) of one command"""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024

subprocess.run([emflow, "s3", "mb", "s3://bench"], env=env, check=True)
aws = [venv + "/aws", "--endpoint-url", endpoint]
s5 = [venv + "/s5cmd", "--endpoint-url", endpoint]

def up_big(tool, n):
    key = f"big-{tool}-{n}"
    return {"emflow": [emflow, "s3", "cp", "--quiet", big, f"s3://bench/{key}"],
            "s5cmd": s5 + ["cp", big, f"s3://bench/{key}"],
            "rclone": ["rclone", "copyto", big, f"b:bench/{key}"],
            "aws": aws + ["s3", "cp", "--no-progress", big, f"s3://bench/{key}"]}[tool]

def down_big(tool, n):
    out = f"{shm}/down-{tool}.bin"
    return {"emflow": [emflow, "s3", "cp", "--quiet", "s3://bench/big-emflow-0", out],
            "s5cmd": s5 + ["cp", "s3://bench/big-emflow-0", out],
            "rclone": ["rclone", "copyto", "b:bench/big-emflow-0", out],
            "aws": aws + ["s3", "cp", "--no-progress", "s3://bench/big-emflow-0", out]}[tool]

def up_small(tool, n):
    p = f"small-{tool}-{n}"
    return {"emflow": [emflow, "s3", "cp", "--quiet", "-r", shm + "/small", f"s3://bench/{p}/"],
            "s5cmd": s5 + ["cp", shm + "/small/*", f"s3://bench/{p}/"],
            "rclone": ["rclone", "copy", shm + "/small", f"b:bench/{p}"],
            "aws": aws + ["s3", "cp", "--no-progress", "--recursive", shm + "/small", f"s3://bench/{p}/"]}[tool]

def down_small(tool, n):
    out = f"{shm}/down-small-{tool}"
    return {"emflow": [emflow, "s3", "cp", "--quiet", "-r", "s3://bench/small-emflow-0/", out + "/"],
            "s5cmd": s5 + ["cp", "s3://bench/small-emflow-0/*", out + "/"],
            "rclone": ["rclone", "copy", "b:bench/small-emflow-0", out],
            "aws": aws + ["s3", "cp", "--no-progress", "--recursive", "s3://bench/small-emflow-0/", out + "/"]}[tool]

def cleanup_downloads():
    for name in os.listdir(shm):
        if name.startswith("down"):
            p = os.path.join(shm, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

cases = [("1 GiB up", up_big, GiB), ("1 GiB down", down_big, GiB),
         ("1000 x 64 KiB up", up_small, small_bytes), ("1000 x 64 KiB down", down_small, small_bytes)]
# The downloads read what emflow uploaded first: make sure it is there.
run(up_big("emflow", 0)); run(up_small("emflow", 0))
# Downloads are measured first: after the uploads' 12 GiB have gone through the page cache, the
# kernel reclaims it to give the downloads' files in /dev/shm their pages, and that cost (up to
# seconds of system time) landed on whichever run came next. Rows print in the usual order.
rows = {}
for name, make, size in [cases[1], cases[3], cases[0], cases[2]]:
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    walls = {t: [] for t in tools}; cpus = {t: [] for t in tools}; rss = {t: [] for t in tools}
    for n in range(1, runs + 1):
        for t in tools:  # interleaved, so drift in the server's state hits every tool alike
            cleanup_downloads()
            os.sync()   # earlier uploads are written back before, not during, the next run
            w, c, m = run(make(t, n))
            walls[t].append(w); cpus[t].append(c); rss[t].append(m)
    mbs = {t: size / statistics.median(walls[t]) / 1e6 for t in tools}
    best_peer = max(mbs[t] for t in tools if t != "emflow")
    cpu = {t: statistics.median(cpus[t]) / (size / GiB) for t in tools}
    rows[name] = (f"{name:<20}" + "".join(f"{mbs[t]:>13.0f}" for t in tools) + f"{mbs['emflow'] / best_peer:>12.2f}x   " +
                  " ".join(f"{cpu[t]:.1f}" for t in tools) + " / " + " ".join(f"{max(rss[t]):.0f}" for t in tools))
print(f"== s3 ({os.cpu_count()} cores, loopback SeaweedFS, client files in /dev/shm, median of {runs})")
print(f"{'case':<20}" + "".join(f"{t + ' MB/s':>13}" for t in tools) + f"{'emflow/best':>13}   CPU s per GiB / peak RSS MB: " + " ".join(tools))
for name, _, _ in cases: print(rows[name])
shutil.rmtree(shm, ignore_errors=True)
