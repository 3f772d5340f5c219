"""Runs every benchmark of the project and writes docs/BENCHMARKS.md with its plots (docs/bench/*.png).

Each benchmark measures Coffer against an anchor run in the same invocation (age, the numpy DP-SGD reference,
dp_accounting, `coffer unseal`, a local pull, plain FedAvg), so the ratios hold on a shared, noisy machine where absolute
times do not. The report quotes every benchmark's own output in full, after a summary of its ratio lines.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def command_output(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores available (SHA extensions: {'yes' if ' sha_ni' in flags else 'no'}, "
                f"AVX-512: {'yes' if ' avx512f' in flags else 'no'})"),
        ("memory", f"{memory} GiB"),
        ("kernel", platform.release()),
        ("Swift", command_output(["swift", "--version"]).splitlines()[0] if command_output(["swift", "--version"]) != "?" else "?"),
        ("libsodium", command_output(["pkg-config", "--modversion", "libsodium"])),
        ("SQLite", command_output(["sqlite3", "--version"]).split(" ")[0]),
        ("age", command_output(["age", "--version"])),
        ("Python", platform.python_version()),
    ]


def run_bench(name, argv, log):
    print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    started = time.time()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.time() - started
    log.write(f"== {name}\n{result.stdout}\n{result.stderr[-4000:]}\n")
    if result.returncode != 0:
        sys.exit(f"benchmark {name} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout, elapsed


def summary_lines(output):
    """The lines of a benchmark's output that state a ratio, a percentile or a target."""
    return [line.strip() for line in output.splitlines() if re.search(r"ratio|target|p99| / ", line) and not line.startswith("#")]


def plot_transfers(data, path_throughput, path_rss):
    sizes = sorted(int(s) for s in data["sizes"])
    figures = data["sizes"]
    plot_by_size(sizes, lambda s, m: s / figures[str(s)][m]["median_s"], "MiB/s (median of rounds)",
                 "Push and pull throughput against age, same run", path_throughput)
    plot_by_size(sizes, lambda s, m: figures[str(s)][m]["peak_rss_mib"], "peak RSS, MiB", "Peak memory against file size", path_rss,
                 from_zero=True)


def plot_by_size(sizes, value, ylabel, title, path, from_zero=False):
    """One line per transfer measure (Coffer solid, age dashed) of `value(size, measure)` on a log2 size axis."""
    styles = {"coffer push": ("C0", "-"), "age -r": ("C0", "--"), "coffer pull": ("C1", "-"), "age -d": ("C1", "--")}
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for measure, (color, line) in styles.items():
        axis.plot(sizes, [value(s, measure) for s in sizes], marker="o", color=color, linestyle=line, label=measure)
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [f"{s} MiB" if s < 1024 else f"{s // 1024} GiB" for s in sizes])
    axis.set_ylabel(ylabel)
    if from_zero:
        axis.set_ylim(bottom=0)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_training(data, path):
    batches = sorted(int(b) for b in data["sweep"])
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot(batches, [data["sweep"][str(b)]["coffer"] for b in batches], marker="o", label="Coffer DP-SGD (OpenBLAS)")
    axis.plot(batches, [data["sweep"][str(b)]["numpy"] for b in batches], marker="o", linestyle="--", label="numpy reference, same step")
    axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.set_xlabel("expected batch size (Poisson sampling)")
    axis.set_ylabel("examples/s")
    axis.set_ylim(bottom=0)
    axis.set_title(f"DP-SGD throughput, {data['rows']:,} rows, one epoch")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the pipeline (the report says so)")
    args = parser.parse_args()
    docs = os.path.join(args.root, "docs")
    images = os.path.join(docs, "bench")
    os.makedirs(images, exist_ok=True)
    py, c = sys.executable, args.coffer
    quick = args.quick
    with tempfile.TemporaryDirectory() as work:
        # Every benchmark's coffer keeps its client state here (those with a work folder of their own use that), never in
        # the user's: records left there by anything else were read by every command, and measured with it.
        os.environ["COFFER_STATE_DIR"] = f"{work}/client-state"
        transfers_json, training_json = f"{work}/transfers.json", f"{work}/training.json"
        sizes = "1,16,64,256" if quick else "1,16,64,256,1024,4096"
        benches = [
            ("crypto", "seal/unseal against age", [py, f"{HERE}/crypto_bench.py", "--coffer", c, "--size-mib", "256" if quick else "1024",
                                                    "--rounds", "1" if quick else "3", "--no-4g"]),
            # --programs-warm: the page cache is emptied before each timed run so that every side reads its data from the disk,
            # then the programs are read back, as any earlier command leaves them; the cold start is a line of its own.
            ("registry", "push/pull against age, 1 MiB to 4 GiB (data cold, programs warm); program start; queries",
             [py, f"{HERE}/registry_bench.py", "--coffer", c, "--sizes", sizes, "--programs-warm", "--rounds", "1" if quick else "3",
              "--versions", "10000" if quick else "100000", *(["--no-4g"] if quick else []), "--json-out", transfers_json]),
            ("training", "DP-SGD against numpy", [py, f"{HERE}/training_bench.py", "--coffer", c, "--rows", "10000" if quick else "60000",
                                                  "--batch-sizes", "128,256" if quick else "64,128,256,512,1024", "--json-out", training_json]),
            ("accountant", "RDP and PLD against dp_accounting", [f"{HERE}/accountant", c]),
            ("session", "inference session against unseal; audit verify", [py, f"{HERE}/session_bench.py", "--coffer", c]
             + (["--width", "1500", "--rounds", "2", "--entries", "50000"] if quick else [])),
            ("server", "coffer serve on loopback", [py, f"{HERE}/server_bench.py", "--coffer", c] + (["--size-mib", "32", "--clients", "4"] if quick else [])),
            ("federated", "secure aggregation against plain FedAvg, 10 and 50 simulated sites",
             [py, f"{HERE}/federated/fl_bench.py", "--coffer", c, "--rounds", "3"] + (["--repeats", "1", "--skip-memory"] if quick else [])),
        ]
        outputs = {}
        with open(f"{work}/log.txt", "w") as log:
            for name, _, argv in benches:
                outputs[name] = run_bench(name, argv, log)
        transfers = json.load(open(transfers_json))
        training = json.load(open(training_json))
    plot_transfers(transfers, f"{images}/transfer-throughput.png", f"{images}/transfer-rss.png")
    plot_training(training, f"{images}/dpsgd-throughput.png")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Coffer benchmarks", "",
             f"Written by `tools/bench/all`{' --quick (small sizes: not the figures to quote)' if quick else ''} on {now}. Every figure "
             "below is a ratio against an anchor measured in the same run (the machines here are shared and noisy, so absolute "
             "times move between runs; ratios much less). Each benchmark can be run alone: `tools/bench/NAME`.", "",
             "## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in machine()]
    lines += ["", "## Summary", "", "| benchmark | anchor | ratio, percentile and target lines | run time |", "| --- | --- | --- | ---: |"]
    for name, anchor, _ in benches:
        summary = "<br>".join(line.replace("|", "\\|") for line in summary_lines(outputs[name][0])) or "(see below)"
        lines.append(f"| `tools/bench/{name}` | {anchor} | {summary} | {outputs[name][1]:.0f} s |")
    lines += ["", "## Plots", "",
              "Push and pull throughput against age from 1 MiB to " + ("256 MiB" if quick else "4 GiB") +
              " (median of the rounds; the publisher's identity read from its file at the lowest Argon2id cost, 1 pass over 8 KiB, not through the agent; push includes two SHA-256 passes, signatures, fsync of the blob and the SQLite commit, "
              "pull the signature and digest checks and an atomic write of the file):", "",
              "![throughput](bench/transfer-throughput.png)", "",
              "Peak RSS of the same runs (GNU time): Coffer streams in bounded memory whatever the size:", "",
              "![peak RSS](bench/transfer-rss.png)", "",
              "DP-SGD examples/s against the numpy reference of the same step, by expected batch size:", "",
              "![DP-SGD](bench/dpsgd-throughput.png)", "",
              "## Each benchmark's output", ""]
    for name, anchor, argv in benches:
        shown = [os.path.relpath(a, args.root) if isinstance(a, str) and a.startswith(args.root) else a for a in argv]
        shown = ["python3" if a == py else ("coffer" if a == c else a) for a in shown]
        lines += [f"### {name}: {anchor}", "", f"`{' '.join(shown)}`", "", "```", outputs[name][0].rstrip(), "```", ""]
    with open(os.path.join(docs, "BENCHMARKS.md"), "w") as out:
        out.write("\n".join(lines))
    print(f"wrote {os.path.join(docs, 'BENCHMARKS.md')} and {images}/*.png")


if __name__ == "__main__":
    main()
