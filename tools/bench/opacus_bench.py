"""DP-SGD against the tool users would otherwise pick (issue 17): `coffer train` side by side with Opacus 1.6 on PyTorch,
on the training benchmark's workload (tools/bench/training_bench.py): 60,000 rows x 64 features from `coffer synth`,
trunk 64-256-256 ReLU, heads 10-class, binary and regression (losses summed per example), expected batch 256 by
Poisson sampling, C=1, sigma=1.1, one epoch, plain SGD at 0.05, 2 threads on both sides. Examples/s of the training
loop only (Coffer's `training_seconds`; on the PyTorch side the loop from the first batch to the last step).

PyTorch's batches are drawn the way Opacus's UniformWithReplacementSampler draws them (each row with probability q),
but as one tensor operation instead of through a DataLoader collating rows one by one: the faster of the two ways to
feed Opacus, so the anchor is the harder one to beat. `--dataloader` adds Opacus's own DPDataLoader as a line."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import warnings

import numpy as np
import torch
from torch import nn
from opacus import PrivacyEngine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training_bench import synthetic  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning, module="opacus")  # secure RNG off, hook firing: notices, not errors

ROWS_DEFAULT, BATCH, CLIP, SIGMA, LR = 60000, 256, 1.0, 1.1, 0.05


class MultiTask(nn.Module):
    """Coffer's network for this recipe: a ReLU trunk and three linear heads, their outputs side by side."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(256, 10), nn.Linear(256, 1), nn.Linear(256, 1)])

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([head(h) for head in self.heads], dim=1)


class MultiTaskLoss(nn.Module):
    """Cross-entropy + binary cross-entropy on logits + squared error, summed per example (Coffer's losses); `reduction`
    as torch's losses have it, which Opacus's ghost clipping sets to "none" to get the per-example losses."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, out, target):
        per_example = (nn.functional.cross_entropy(out[:, :10], target[:, 0].long(), reduction="none")
                       + nn.functional.binary_cross_entropy_with_logits(out[:, 10], target[:, 1], reduction="none")
                       + (out[:, 11] - target[:, 2]) ** 2)
        if self.reduction == "none":
            return per_example
        return per_example.mean() if self.reduction == "mean" else per_example.sum()


def poisson_batches(n, q, generator):
    steps = int(round(1 / q))
    for _ in range(steps):
        yield torch.nonzero(torch.rand(n, generator=generator) < q).squeeze(1)


def torch_epoch(x, y, mode):
    """One epoch; mode is "non-private", "ghost" (Opacus fast gradient clipping), "hooks" (Opacus's default per-sample
    gradients) or "ghost, DPDataLoader". Returns examples/s."""
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    n = x.shape[0]
    q = BATCH / n
    model = MultiTask()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    criterion = MultiTaskLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    if mode != "non-private":
        engine = PrivacyEngine(accountant="rdp")
        made = engine.make_private(module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                                   noise_multiplier=SIGMA, max_grad_norm=CLIP, poisson_sampling=True,
                                   grad_sample_mode="hooks" if mode == "hooks" else "ghost")
        if mode == "hooks":
            model, optimizer, loader = made
        else:
            model, optimizer, criterion, loader = made
    examples = 0
    start = time.perf_counter()
    if mode == "ghost, DPDataLoader":
        batches = ((xb, yb) for xb, yb in loader)
    else:
        batches = ((x[idx], y[idx]) for idx in poisson_batches(n, q, generator))
    for xb, yb in batches:
        if len(xb) == 0:
            continue
        examples += len(xb)
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
    return examples / (time.perf_counter() - start)


def coffer_epoch(coffer, work, tasks, private):
    recipe = {"data": "data.csv", "features": [f"x{i}" for i in range(64)], "trunk": [256, 256], "activation": "relu", "epochs": 1,
              "learning_rate": LR, "optimizer": "sgd", "momentum": 0.0, "expected_batch_size": BATCH, "clipping_norm": CLIP,
              "noise_multiplier": SIGMA, "delta": 1e-5, "validation_split": 0.0, "seed": 1, "tasks": tasks, "feature_bounds": [-4, 4]}
    if not private:
        recipe |= {"privacy": False, "noise_multiplier": None}
    path = os.path.join(work, "recipe.json")
    json.dump(recipe, open(path, "w"))
    out = subprocess.run([coffer, "train", "--config", path, "--out", os.path.join(work, "ckpt"), "--json"], check=True,
                         capture_output=True, text=True)
    report = json.loads(out.stdout)
    return report["examples"] / report["training_seconds"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--rows", type=int, default=ROWS_DEFAULT)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every line; medians reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hooks", action="store_true", help="also Opacus's default per-sample hooks (about 20 s an epoch)")
    parser.add_argument("--dataloader", action="store_true", help="also Opacus ghost clipping fed by its own DPDataLoader")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["coffer dp-sgd", "opacus ghost", "coffer non-private", "pytorch non-private"]
    lines += ["opacus ghost, DPDataLoader"] * args.dataloader + ["opacus hooks"] * args.hooks
    samples = {line: [] for line in lines}
    with tempfile.TemporaryDirectory() as work:
        xs, cls, binary, reg = synthetic(args.coffer, args.rows, work)
        tasks = json.load(open(os.path.join(work, "recipe.json")))["tasks"]
        x = torch.from_numpy(np.ascontiguousarray(xs))
        y = torch.from_numpy(np.stack([cls.astype(np.float32), binary, reg], axis=1))
        for r in range(args.rounds):
            # Alternate which side goes first, so that a drift of the machine within a round falls on both.
            for line in (lines if r % 2 == 0 else list(reversed(lines))):
                if line.startswith("coffer"):
                    value = coffer_epoch(args.coffer, work, tasks, private=line == "coffer dp-sgd")
                else:
                    mode = {"opacus ghost": "ghost", "pytorch non-private": "non-private", "opacus hooks": "hooks",
                            "opacus ghost, DPDataLoader": "ghost, DPDataLoader"}[line]
                    value = torch_epoch(x, y, mode)
                samples[line].append(value)
    med = {line: statistics.median(v) for line, v in samples.items()}
    print(f"# tools/bench/opacus: {args.rows} rows x 64 features, trunk 64-256-256 ReLU, heads 10/1/1, expected batch {BATCH}, "
          f"C={CLIP}, sigma={SIGMA}, one epoch, {args.threads} threads; torch {torch.__version__}, opacus "
          f"{__import__('opacus').__version__}; {args.rounds} alternating rounds")
    print(f"{'line':<28}{'median ex/s':>13}   samples")
    for line in lines:
        print(f"{line:<28}{med[line]:>13.0f}   " + " ".join(f"{v:.0f}" for v in samples[line]))
    print(f"coffer DP-SGD / Opacus ghost clipping: {med['coffer dp-sgd'] / med['opacus ghost']:.2f}  (target >= 1.0, moonshot 1.5)")
    print(f"coffer non-private / PyTorch: {med['coffer non-private'] / med['pytorch non-private']:.2f}  (target >= 1.0)")
    if args.hooks:
        print(f"coffer DP-SGD / Opacus default hooks: {med['coffer dp-sgd'] / med['opacus hooks']:.2f}")
    if args.json_out:
        json.dump({"rows": args.rows, "threads": args.threads, "samples": samples, "medians": med}, open(args.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()
