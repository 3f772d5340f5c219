"""Where the time of one small push goes: a timeline of milestones inside `coffer push` (1 MiB, identity in the agent,
warm), from uprobes on the release binary's own functions, not from a profile's samples.

Each run is recorded with `perf record` on probes at the entry (and, for synchronous functions, the return) of the
functions below, on the process's exec and exit, and on its fsync/fdatasync calls. A milestone is the first hit of its
probe after the milestone before it; the table gives each one's median time since exec over the runs and the
interval to the next. Probes cost a few microseconds a hit: the total runs a little over an unprobed push's.
Needs root (uprobes) and perf.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402

GROUP = "coffer_timeline"
# (label, regular expression for the one mangled symbol, probe its return too, which hit: "first" or "last"). Mangled
# names move when a signature changes: a pattern that matches no symbol, or several, is reported and left out.
MILESTONES = [
    ("parse arguments", r"^\$s14ArgumentParser15ParsableCommandPAAE11parseAsRootyAaB_pSaySSGSgKFZ$", True, "first"),
    ("open the registry", r"^\$s14CofferRegistry0B0C2at11busyTimeout6memory11environment6sqlite.*KcfC$", False, "first"),
    ("push: ledger and client state", r"^\$s14CofferRegistry0B0C4push_9publisher8progress.*YaAA0aB5ErrorOYKF$", False, "first"),
    ("seal the file", r"^\$s12CofferCrypto10SealedFileO4seal4from2to7dataKey7stanzas.*KFZ$", True, "first"),
    ("sign (agent)", r"^\$s12CofferCrypto15AgentConnectionC9signature.*KF$", False, "first"),
    ("commit (SQLite)", r"^\$s14CofferRegistry19SQLiteMetadataStoreC6commityyAA10UnitOfWorkVYaAA0aB5ErrorOYKFSb_Sbt4GRDB8DatabaseCYbKcfU_$", False, "last"),
    ("remember the ledger (client state)", r"^\$s14CofferRegistry12ClientMemoryV8remember_6update.*KF$", False, "last"),
]


def symbols(binary):
    out = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    return [line.split()[2] for line in out.splitlines() if len(line.split()) == 3 and line.split()[1] in "Tt"]


def add_probes(binary):
    names = symbols(binary)
    probes = []
    for index, (label, pattern, with_return, which) in enumerate(MILESTONES):
        found = [n for n in names if re.match(pattern, n)]
        if len(found) != 1:
            print(f"# {label}: {len(found)} symbols match, left out")
            continue
        subprocess.run(["perf", "probe", "-q", "-x", binary, "-a", f"{GROUP}:m{index}={found[0]}"], check=True, capture_output=True)
        probes.append((f"m{index}", label, which))
        if with_return:
            subprocess.run(["perf", "probe", "-q", "-x", binary, "-a", f"{GROUP}:r{index}={found[0]}%return"], check=True, capture_output=True)
            probes.append((f"r{index}", f"{label}: returned", which))
    return probes


def timeline(binary, argv, env, work, probes):
    """One run: [(event, ms since exec)] in order."""
    data = os.path.join(work, "perf.data")
    subprocess.run(["perf", "record", "-q", "-o", data, "-e", f"{GROUP}:*", "-e", "sched:sched_process_exec",
                    "-e", "syscalls:sys_enter_exit_group", "-e", "syscalls:sys_enter_fsync", "-e", "syscalls:sys_enter_fdatasync",
                    binary, *argv], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "time,event"], capture_output=True, text=True, check=True).stdout
    events, start = [], None
    for line in script.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        seconds, event = float(fields[0].rstrip(":")), fields[1].rstrip(":").split(":")[-1]
        event = {"sched_process_exec": "exec", "sys_enter_exit_group": "exit", "sys_enter_fsync": "sync",
                 "sys_enter_fdatasync": "sync"}.get(event, event.replace("__return", ""))
        start = seconds if start is None else start
        events.append((event, (seconds - start) * 1000))
    return events


def milestones(events, probes):
    """Each milestone's time (its first or last hit), and the syncs made after it before the next."""
    which = {name: hit for name, _, hit in probes} | {"exec": "first", "exit": "first"}
    times = {}
    for event, ms in events:
        if event in which and (event not in times or which[event] == "last"):
            times[event] = ms
    marks = sorted(times.items(), key=lambda item: item[1])
    syncs = {}
    for event, ms in events:
        if event == "sync":
            before = [name for name, at in marks if at <= ms]
            if before:
                syncs[before[-1]] = syncs.get(before[-1], 0) + 1
    return times, syncs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("perf"):
        sys.exit("tools/bench/timeline needs root (uprobes) and perf")
    work = tempfile.mkdtemp(prefix="coffer-timeline-")
    env = cofferlib.environment(work, COFFER_HOME=f"{work}/home", XDG_RUNTIME_DIR=f"{work}/rt")
    os.makedirs(f"{work}/rt", mode=0o700)
    agent = None
    subprocess.run(["perf", "probe", "-q", "-d", f"{GROUP}:*"], capture_output=True)
    try:
        subprocess.run([args.coffer, "keygen", "--out", f"{work}/id"], env=env, check=True, capture_output=True)
        cofferlib.check(args.coffer, "init", env=env)
        cofferlib.check(args.coffer, "trust", "add", f"{work}/id.pub", env=env)
        env["COFFER_AGENT_SOCK"], agent = cofferlib.start_service(args.coffer, "agent", env)
        cofferlib.check(args.coffer, "agent", "add", f"{work}/id.key", env=env)
        del env["COFFER_PASSPHRASE"]  # every unlock below is the agent's
        with open(f"{work}/weights.bin", "wb") as f:
            f.write(os.urandom(args.size_mib << 20))
        push = lambda n: ["push", f"m:{n}", f"{work}/weights.bin", "--identity", f"{work}/id.key"]  # noqa: E731
        for n in range(3):  # warm: the page cache holds the binary, the registry and the file
            cofferlib.check(args.coffer, *push(n), env=env)
        probes = add_probes(args.coffer)
        runs = [milestones(timeline(args.coffer, push(100 + n), env, work, probes), probes) for n in range(args.runs)]
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", f"{GROUP}:*"], capture_output=True)
        if agent:
            subprocess.run([args.coffer, "agent", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    labels = dict([("exec", "exec: loader, runtime start")] + [(name, label) for name, label, _ in probes] + [("exit", "exit")])
    print(f"# coffer push of {args.size_mib} MiB, identity in the agent, warm; medians of {args.runs} runs (ms since exec)")
    print(f"{'milestone':<42}{'at':>8}{'to next':>9}  syncs after")
    medians = sorted(((name, label, statistics.median(r[0][name] for r in runs)) for name, label in labels.items()
                      if all(name in r[0] for r in runs)), key=lambda row: row[2])
    for i, (name, label, at) in enumerate(medians):
        following = f"{medians[i + 1][2] - at:9.1f}" if i + 1 < len(medians) else " " * 9
        syncs = statistics.median(r[1].get(name, 0) for r in runs)
        print(f"{label:<42}{at:8.1f}{following}  {syncs:g}")


if __name__ == "__main__":
    main()
