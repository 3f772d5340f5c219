"""Benchmark (issue 19): the cost of a one-run privacy audit. The training benchmark's workload (tools/bench/training:
60,000 synthetic rows x 64 features, trunk 64-256-256 ReLU, heads 10-class, binary and regression, expected batch 256,
C = 1, sigma = 1.1, one epoch, SGD) trained with M = 1000 audit canaries and without, alternating in one invocation;
the ratio of the medians is the overhead (target <= 1.2x). Also the audit's own time: scoring the canaries after each
epoch and the bound over the guess grid, as `coffer train --json` reports it, and the bound alone from counts.

Usage: audit_bench.py --coffer BIN [--rows 60000] [--pairs 7] [--canaries 1000] [--json-out FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time


def train(coffer, recipe_path, out, canaries):
    args = [coffer, "train", "--config", recipe_path, "--out", out, "--json"]
    if canaries:
        args += ["--audit-canaries", str(canaries)]
    started = time.perf_counter()
    report = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    report["wall_seconds"] = time.perf_counter() - started
    return report


def measure(coffer, rows=60000, pairs=5, canaries=1000):
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([coffer, "synth", "--rows", str(rows), "--features", "64", "--classes", "10", "--out", work], check=True,
                       capture_output=True)
        tasks = json.load(open(os.path.join(work, "recipe.json")))["tasks"]
        recipe = {"data": "data.csv", "features": [f"x{i}" for i in range(64)], "tasks": tasks, "trunk": [256, 256], "activation": "relu",
                  "epochs": 1, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.0, "expected_batch_size": 256,
                  "clipping_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5, "validation_split": 0.0, "seed": 1,
                  "feature_bounds": [-4, 4]}
        path = os.path.join(work, "recipe.json")
        json.dump(recipe, open(path, "w"))
        train(coffer, path, os.path.join(work, "warm"), 0)  # page cache and CPU frequency, not measured
        plain, audited = [], []
        for i in range(pairs):
            # Alternate which goes first, so that drift on a shared machine falls on both.
            order = [(plain, 0), (audited, canaries)] if i % 2 == 0 else [(audited, canaries), (plain, 0)]
            for bucket, m in order:
                bucket.append(train(coffer, path, os.path.join(work, "ckpt"), m))
        bound_times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([coffer, "privacy", "audit-bound", "--canaries", str(canaries), "--guesses", str(canaries), "--correct",
                            str(canaries * 6 // 10), "--delta", "1e-5", "--significance", str(0.05 / 8)], check=True, capture_output=True)
            bound_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(5):
            subprocess.run([coffer, "privacy", "epsilon", "--sample-rate", "0.1", "--noise-multiplier", "1", "--steps", "1",
                            "--delta", "1e-5"], check=True, capture_output=True)
        process_start = (time.perf_counter() - started) / 5

    def median(bucket, key):
        return statistics.median(r[key] for r in bucket)

    result = {
        "rows": rows, "canaries": canaries, "pairs": pairs,
        "training_seconds": {"plain": median(plain, "training_seconds"), "audited": median(audited, "training_seconds")},
        "wall_seconds": {"plain": median(plain, "wall_seconds"), "audited": median(audited, "wall_seconds")},
        "audit_seconds": median(audited, "audit_seconds"),
        "bound_process_seconds": statistics.median(bound_times),
        "process_start_seconds": process_start,
        "epsilon_lower_bound": [r["evidence"]["audit"]["epsilon_lower_bound"] for r in audited],
        "epsilon": audited[0]["epsilon"],
    }
    result["training_ratio"] = result["training_seconds"]["audited"] / result["training_seconds"]["plain"]
    result["wall_ratio"] = result["wall_seconds"]["audited"] / result["wall_seconds"]["plain"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    r = measure(args.coffer, args.rows, args.pairs, args.canaries)
    print(f"# tools/bench/audit: {r['rows']} rows x 64 features, trunk 64-256-256, sigma 1.1, one epoch; "
          f"M = {r['canaries']} canaries against none, median of {r['pairs']} alternating pairs")
    print(f"training steps: {r['training_seconds']['plain']:.3f} s plain, {r['training_seconds']['audited']:.3f} s audited, "
          f"ratio {r['training_ratio']:.3f}  (target <= 1.2)")
    print(f"whole coffer train: {r['wall_seconds']['plain']:.3f} s plain, {r['wall_seconds']['audited']:.3f} s audited, "
          f"ratio {r['wall_ratio']:.3f}")
    print(f"audit (canary scores after each epoch and the bound over 8 guess sets): {r['audit_seconds'] * 1000:.1f} ms")
    print(f"coffer privacy audit-bound (m = r = {r['canaries']}), whole process: {r['bound_process_seconds'] * 1000:.1f} ms "
          f"(a trivial coffer command: {r['process_start_seconds'] * 1000:.1f} ms)")
    print(f"epsilon {r['epsilon']:.4f}; audit lower bounds {', '.join(f'{e:.3f}' for e in r['epsilon_lower_bound'])}")
    if args.json_out:
        json.dump(r, open(args.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()
