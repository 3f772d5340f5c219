"""Coffer's federated training side by side with Flower (PyPI flwr 1.42.0), issue 18.

Same data (data/randhie.csv: a fixed 20% test set; the rest split across sites IID, or non-IID by sorting on `lncoins`,
the insurance plan's coinsurance, so each site holds other plans), same model (5 features -> 64 ReLU -> 4-class
softmax for self-rated health), same local training (SGD, momentum 0.9, learning rate 0.05, Poisson batches of
expected size 64, one local epoch per round), same rounds, FedAvg weighted by examples, features standardised with
the pooled training statistics (Coffer derives them in its secure statistics round; Flower is given them).

1. Accuracy and cross-entropy on the test set after the same rounds, over several seeds: Coffer's secure FedAvg
   (`coffer fl simulate`) against Flower's FedAvg (numpy clients in Flower's simulation runtime).
2. Per-round wall time with secure aggregation, the same sites, threshold and quantization (clip 8, 2^22 levels, every
   site a neighbour of every other): Coffer's protocol against Flower's SecAggPlusWorkflow, each with its own plain
   FedAvg round for reference. Flower's rounds are timed around its fit workflow; Coffer's by its coordinator.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
FEATURES = ["lncoins", "idp", "lpi", "fmde", "disea"]
HIDDEN = 64
LEARNING_RATE = 0.05
MOMENTUM = 0.9
BATCH = 64


def load():
    with open(ROOT / "data" / "randhie.csv") as f:
        header = f.readline().strip().split(",")
    table = np.loadtxt(ROOT / "data" / "randhie.csv", delimiter=",", skiprows=1)
    return header, table


def labels(header, rows):
    g, f, p = (rows[:, header.index(c)] for c in ("hlthg", "hlthf", "hlthp"))
    return (g == 1) * 1 + (f == 1) * 2 + (p == 1) * 3


def split(header, table, sites, mode, seed=11):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    test = table[order[: len(table) // 5]]
    rest = table[order[len(table) // 5:]]
    if mode == "iid":
        shards = [rest[i::sites] for i in range(sites)]
    else:
        rest = rest[np.argsort(rest[:, header.index(mode)], kind="stable")]
        shards = [rest[i * len(rest) // sites:(i + 1) * len(rest) // sites] for i in range(sites)]
    return shards, test


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def recipe(seed):
    return {"data": "unused.csv", "features": FEATURES,
            "tasks": [{"name": "health", "kind": "classification", "one_hot": ["hlthg", "hlthf", "hlthp"]}],
            "trunk": [HIDDEN], "epochs": 1, "learning_rate": LEARNING_RATE, "optimizer": "sgd", "momentum": MOMENTUM,
            "expected_batch_size": BATCH, "privacy": False, "seed": seed, "validation_split": 0.0}


# MARK: - The same model and local training in numpy, for Flower's clients

def init(seed):
    rng = np.random.default_rng(seed)
    b1, b2 = 1 / np.sqrt(len(FEATURES)), 1 / np.sqrt(HIDDEN)
    return [rng.uniform(-b1, b1, (HIDDEN, len(FEATURES))), rng.uniform(-b1, b1, HIDDEN),
            rng.uniform(-b2, b2, (4, HIDDEN)), rng.uniform(-b2, b2, 4)]


def forward(params, x):
    w1, c1, w2, c2 = params
    h = np.maximum(x @ w1.T + c1, 0)
    z = h @ w2.T + c2
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return h, p / p.sum(1, keepdims=True)


def local_epoch(params, x, y, seed):
    rng = np.random.default_rng(seed)
    params = [p.copy() for p in params]
    moments = [np.zeros_like(p) for p in params]
    q = min(1.0, BATCH / len(x))
    for _ in range(max(1, round(1 / q))):
        idx = np.nonzero(rng.random(len(x)) < q)[0]
        if len(idx) == 0:
            grads = [np.zeros_like(p) for p in params]
        else:
            xb, yb = x[idx], y[idx]
            h, p = forward(params, xb)
            g = p.copy()
            g[np.arange(len(idx)), yb] -= 1
            g /= len(idx)
            gw2, gc2 = g.T @ h, g.sum(0)
            dh = (g @ params[2]) * (h > 0)
            grads = [dh.T @ xb, dh.sum(0), gw2, gc2]
        for k in range(4):
            moments[k] = MOMENTUM * moments[k] + grads[k]
            params[k] -= LEARNING_RATE * moments[k]
    return params


def score(params, x, y):
    _, p = forward(params, x)
    return float((p.argmax(1) == y).mean()), float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


# MARK: - Flower

def flower_run(shards, test, header, rounds, seed, secagg=None):
    """Flower's FedAvg (optionally with SecAgg+) in its simulation runtime. Returns (accuracy, loss, fit round seconds)."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    stacked = np.concatenate(shards)
    mean, std = stacked[:, [header.index(f) for f in FEATURES]].mean(0), stacked[:, [header.index(f) for f in FEATURES]].std(0)
    std[std == 0] = 1

    def features(rows):
        return (rows[:, [header.index(f) for f in FEATURES]] - mean) / std

    data = [(features(s), labels(header, s)) for s in shards]
    x_test, y_test = features(test), labels(header, test)
    results = {"evaluations": [], "fit_seconds": []}

    class Client(NumPyClient):
        def __init__(self, k):
            self.k = k

        def fit(self, parameters, config):
            x, y = data[self.k]
            rnd = int(config.get("round", 0))
            return local_epoch(parameters, x, y, seed * 1000 + self.k * 31 + rnd), len(x), {}

    def client_fn(context: Context):
        return Client(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])

    def evaluate(server_round, parameters, config):
        accuracy, loss = score(parameters, x_test, y_test)
        results["evaluations"].append((server_round, accuracy, loss))
        return loss, {"accuracy": accuracy}

    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(shards), min_available_clients=len(shards),
                          initial_parameters=ndarrays_to_parameters(init(seed)), evaluate_fn=evaluate,
                          on_fit_config_fn=lambda rnd: {"round": rnd})
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        inner = secagg or None
        from flwr.server.workflow.default_workflows import default_fit_workflow
        fit = inner if inner is not None else default_fit_workflow

        def timed(grid, context):
            start = time.perf_counter()
            fit(grid, context)
            results["fit_seconds"].append(time.perf_counter() - start)

        DefaultWorkflow(fit_workflow=timed)(grid, legacy)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(shards),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": os.cpu_count(), "logging_level": "error", "log_to_driver": False}})
    final = [e for e in results["evaluations"] if e[0] == rounds][-1]
    return final[1], final[2], results["fit_seconds"]


def flower_subprocess(sites, mode, rounds, seed, secagg_threshold=None):
    """One Flower simulation in a fresh process (Ray does not restart cleanly inside one)."""
    job = {"sites": sites, "mode": mode, "rounds": rounds, "seed": seed, "secagg_threshold": secagg_threshold}
    out = subprocess.run([sys.executable, __file__, "--flower-worker", json.dumps(job)], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"Flower run {job} failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def flower_worker(job):
    from flwr.server.workflow import SecAggPlusWorkflow
    header, table = load()
    shards, test = split(header, table, job["sites"], job["mode"])
    secagg = None
    if job["secagg_threshold"]:
        secagg = SecAggPlusWorkflow(num_shares=job["sites"], reconstruction_threshold=job["secagg_threshold"], clipping_range=8.0,
                                    quantization_range=2 ** 22, modulus_range=2 ** 32, max_weight=20000.0)
    accuracy, loss, seconds = flower_run(shards, test, header, job["rounds"], job["seed"], secagg=secagg)
    print("RESULT " + json.dumps([accuracy, loss, seconds]), flush=True)


# MARK: - Coffer

def coffer_run(coffer, work, shards, test, header, rounds, seed, plain=False, threshold=None):
    paths = []
    for i, shard in enumerate(shards):
        path = work / f"shard-{seed}-{i}.csv"
        write_csv(path, header, shard)
        paths.append(path)
    write_csv(work / "test.csv", header, test)
    (work / f"recipe-{seed}.json").write_text(json.dumps(recipe(seed)))
    args = [coffer, "fl", "simulate", "--recipe", work / f"recipe-{seed}.json", "--rounds", str(rounds), "--evaluate", work / "test.csv",
            "--bits", "22", "--clip-range", "8", "--json"] + sum([["--shard", p] for p in paths], [])
    if plain:
        args.append("--plain")
    if threshold:
        args += ["--threshold", str(threshold)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    seconds = [r["seconds"] for r in report["rounds"] if r["outcome"] == "ok"]
    return report["metrics"]["health.accuracy"], report["losses"]["health"], seconds


def summary(values):
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here as JSON")
    parser.add_argument("--part", choices=["all", "accuracy", "timing"], default="all")
    parser.add_argument("--flower-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        return flower_worker(json.loads(args.flower_worker))
    if not args.coffer:
        parser.error("--coffer is required")
    import flwr
    header, table = load()
    out = {"flwr": flwr.__version__, "sites": args.sites, "rounds": args.rounds, "seeds": args.seeds, "load_average": os.getloadavg()[0]}
    threshold = (2 * args.sites + 2) // 3  # > 2/3 of the shares, the same count on both sides
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for mode in ["iid", "lncoins"] if args.part != "timing" else []:
            shards, test = split(header, table, args.sites, mode)
            ours, theirs = [], []
            for seed in range(1, args.seeds + 1):
                ours.append(coffer_run(args.coffer, work, shards, test, header, args.rounds, seed)[:2])
                theirs.append(flower_subprocess(args.sites, mode, args.rounds, seed)[:2])
            row = {"coffer_accuracy": [a for a, _ in ours], "coffer_loss": [l for _, l in ours],
                   "flower_accuracy": [a for a, _ in theirs], "flower_loss": [l for _, l in theirs]}
            out[mode] = row
            print(f"{'IID' if mode == 'iid' else 'non-IID by ' + mode}, {args.sites} sites, {args.rounds} rounds, {args.seeds} seeds: "
                  f"accuracy Coffer {summary(row['coffer_accuracy'])} / Flower {summary(row['flower_accuracy'])}; "
                  f"loss Coffer {summary(row['coffer_loss'])} / Flower {summary(row['flower_loss'])}", flush=True)
        if args.part == "accuracy":
            shards = []
        else:
            shards, test = split(header, table, args.sites, "iid")
        if shards:
            _, _, coffer_secure = coffer_run(args.coffer, work, shards, test, header, args.rounds, 1, threshold=threshold)
            _, _, coffer_plain = coffer_run(args.coffer, work, shards, test, header, args.rounds, 1, plain=True)
            _, _, flower_secure = flower_subprocess(args.sites, "iid", args.rounds, 1, secagg_threshold=threshold)
            _, _, flower_plain = flower_subprocess(args.sites, "iid", args.rounds, 1)
            # Round 1 of a Flower simulation includes starting Ray's actors (tens of seconds here): rounds 2... are compared.
            flower_secure, flower_plain = flower_secure[1:], flower_plain[1:]
            coffer_secure, coffer_plain = coffer_secure[1:], coffer_plain[1:]
            median = statistics.median
            out["round_seconds"] = {"coffer_secure": coffer_secure, "coffer_plain": coffer_plain, "flower_secagg_plus": flower_secure,
                                    "flower_plain": flower_plain, "threshold": threshold}
            print(f"per-round wall time, {args.sites} sites, threshold {threshold}, clip 8, 2^22 levels (median of rounds 2 to {args.rounds}): "
                  f"Coffer secure {median(coffer_secure):.3f} s (plain {median(coffer_plain):.3f} s, {median(coffer_secure) / median(coffer_plain):.2f}x); "
                  f"Flower SecAgg+ {median(flower_secure):.3f} s (plain {median(flower_plain):.3f} s, {median(flower_secure) / median(flower_plain):.2f}x); "
                  f"Flower SecAgg+ / Coffer secure {median(flower_secure) / median(coffer_secure):.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
