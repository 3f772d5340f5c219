"""The evidence beside the proof, checked from outside: `coffer split` is the split `coffer train` validated on, the
membership attacks' AUC and TPR agree with scikit-learn's on losses recomputed in numpy, bad members files are refused
with one line, and the scikit-learn baselines run on that split and write their report."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sklearn_baseline import baselines
from test_interop import COFFER
from test_training import numpy_forward


def binary_logits(ckpt, x):
    """The binary head's raw output (numpy_forward gives its sigmoid, which rounds to 1 where the loss still differs)."""
    from safetensors import safe_open
    with safe_open(str(ckpt / "model.safetensors"), framework="np") as f:
        arch = json.loads(f.metadata()["coffer.architecture"])
        pre = json.loads(f.metadata()["coffer.preprocessing"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    h = ((x - np.array(pre["means"])) / np.array(pre["standard_deviations"])).astype(np.float32)
    for i in range(len(arch["trunk"])):
        h = np.maximum(h @ t[f"trunk.{i}.weight"].T + t[f"trunk.{i}.bias"], 0)
    return (h @ t["heads.bin.weight"].T + t["heads.bin.bias"])[:, 0].astype(np.float64)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A non-private model trained long on few rows with noisy labels: it remembers its members."""
    work = tmp_path_factory.mktemp("evidence")
    subprocess.run([COFFER, "synth", "--rows", "400", "--features", "6", "--classes", "3", "--seed", "2", "--out", work],
                   check=True, capture_output=True)
    # A third of the class labels redrawn at random: only a model that memorises its members gets those right.
    lines = (work / "data.csv").read_text().splitlines()
    rng = np.random.default_rng(5)
    column = lines[0].split(",").index("cls")
    for i in range(1, len(lines)):
        if rng.random() < 1 / 3:
            cells = lines[i].split(",")
            cells[column] = str(rng.integers(3))
            lines[i] = ",".join(cells)
    (work / "data.csv").write_text("\n".join(lines) + "\n")
    recipe = json.loads((work / "recipe.json").read_text())
    recipe.update(privacy=False, noise_multiplier=None, trunk=[64, 64], epochs=60, expected_batch_size=32, validation_split=0.5)
    (work / "recipe.json").write_text(json.dumps(recipe))
    subprocess.run([COFFER, "train", "--config", work / "recipe.json", "--out", work / "ckpt", "--utility-baseline"],
                   check=True, capture_output=True)
    subprocess.run([COFFER, "split", "--config", work / "recipe.json", "--out", work / "split"], check=True, capture_output=True)
    return work, recipe


def members_file(work):
    rows = []
    for name, member in (("train.csv", 1), ("validation.csv", 0)):
        with open(work / "split" / name) as f:
            reader = csv.reader(f)
            header = next(reader)
            rows += [r + [str(member)] for r in reader]
    with open(work / "members.csv", "w") as f:
        f.write(",".join(header + ["member"]) + "\n")
        f.writelines(",".join(r) + "\n" for r in rows)
    return header, rows


def test_the_split_is_the_one_training_validated_on(overfit):
    work, recipe = overfit
    train = (work / "split" / "train.csv").read_text().splitlines()
    validation = (work / "split" / "validation.csv").read_text().splitlines()
    data = (work / "data.csv").read_text().splitlines()
    assert train[0] == validation[0] == data[0]
    assert len(train) - 1 + len(validation) - 1 == len(data) - 1 == 400
    assert not set(train[1:]) & set(validation[1:])
    scored = subprocess.run([COFFER, "predict", "--checkpoint", work / "ckpt", "--input", work / "split" / "validation.csv",
                             "--evaluate", "--json"], check=True, capture_output=True, text=True)
    recorded = json.loads(subprocess.run([COFFER, "checkpoint", "inspect", work / "ckpt" / "model.safetensors", "--json"],
                                         check=True, capture_output=True, text=True).stdout)["metadata"]["coffer.metrics"]
    for metric in json.loads(recorded):
        assert json.loads(scored.stdout)[f"{metric['task']}.{metric['metric']}"] == pytest.approx(metric["value"], abs=1e-12)


def test_membership_attacks_agree_with_scikit_learn(overfit):
    work, recipe = overfit
    header, rows = members_file(work)
    out = subprocess.run([COFFER, "privacy", "attack", "--checkpoint", work / "ckpt", "--members", work / "members.csv", "--json"],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    x = np.array([[float(r[header.index(c)]) for c in recipe["features"]] for r in rows])
    member = np.array([int(r[-1]) for r in rows])
    predictions, _ = numpy_forward(work / "ckpt", x)
    z = binary_logits(work / "ckpt", x)
    cls = np.array([int(float(r[header.index("cls")])) for r in rows])
    binary = np.array([float(r[header.index("bin")]) for r in rows])
    reg = np.array([float(r[header.index("reg")]) for r in rows])
    losses = {"cls": -np.log(np.maximum(predictions["cls"][np.arange(len(rows)), cls], 1e-30)),
              "bin": np.maximum(z, 0) - z * binary + np.log1p(np.exp(-np.abs(z))),
              "reg": (predictions["reg"] - reg) ** 2}
    # The evaluated rows: every member, and the non-members at odd positions (the even ones are the population).
    non_members = np.flatnonzero(member == 0)
    evaluated = np.concatenate([np.flatnonzero(member == 1), non_members[1::2]])
    assert result["members"] == 200 and result["non_members"] == 100 and result["population"] == 100
    for task, loss in losses.items():
        ours = result["tasks"][task]["loss"]
        assert ours["auc"] == pytest.approx(roc_auc_score(member[evaluated], -loss[evaluated]), abs=2e-3), task
        outside = np.sort(loss[non_members[1::2]])
        threshold = outside[int(0.01 * len(outside))]
        assert ours["tpr_at_1pct_fpr"] == pytest.approx(np.mean(loss[member == 1] < threshold), abs=0.011), task
    assert result["max_auc"] > 0.6, "60 epochs on 200 rows with noisy labels: the members' losses are lower"


def test_a_members_file_without_the_checkpoints_features_is_refused(overfit, tmp_path):
    work, _ = overfit
    (tmp_path / "bad.csv").write_text("x0,x1,cls,bin,reg,member\n0,0,1,0,0.5,1\n0,1,2,1,0.1,0\n")
    out = subprocess.run([COFFER, "privacy", "attack", "--checkpoint", work / "ckpt", "--members", tmp_path / "bad.csv"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
    assert "does not match the checkpoint's features: column 'x2' is missing" in out.stderr


def test_scikit_learn_baselines_run_on_the_split_and_write_a_report(overfit, tmp_path):
    work, _ = overfit
    report_path = tmp_path / "baseline.json"
    subprocess.run([sys.executable, Path(__file__).parent / "sklearn_baseline.py",
                    "--coffer", COFFER, "--config", work / "recipe.json", "--checkpoint", work / "ckpt", "--out", report_path],
                   check=True, capture_output=True)
    report = json.loads(report_path.read_text())
    assert report["train_rows"] == 200 and report["validation_rows"] == 200
    assert set(report["tasks"]) == {"cls", "bin"}
    for task in report["tasks"].values():
        for name in ("logistic_regression", "gradient_boosting", "coffer_private", "coffer_non_private"):
            assert 0.3 < task[name] <= 1, (name, task)
    # Logistic regression fits these linear synthetic labels well.
    assert report["tasks"]["bin"]["logistic_regression"] > 0.9
    assert report == baselines(COFFER, work / "recipe.json", work / "ckpt") | {"config": report["config"]}
