"""Classical baselines on the split Coffer trains on: scikit-learn's logistic regression and histogram gradient boosting
for each classification and binary task of a recipe, beside Coffer's private and non-private metrics when a checkpoint
with a utility report is given. Writes a JSON report.

Usage: sklearn_baseline.py --coffer BIN --config RECIPE --out REPORT.json [--checkpoint DIR]

The split comes from `coffer split` (the same seeded shuffle `coffer train` uses); targets are derived as the recipe says
(class index or one-hot columns, threshold for binary tasks); features are standardised on the training rows. Metrics are
Coffer's: accuracy for classification, ROC AUC for binary tasks.
"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score


def read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    return header, np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def target(task, header, table):
    column = {name: table[:, i] for i, name in enumerate(header)}
    if task["kind"] == "classification":
        if task.get("one_hot"):
            y = np.zeros(len(table), dtype=int)
            for k, name in enumerate(task["one_hot"]):
                y[column[name] == 1] = k + 1
            return y
        return column[task["column"]].astype(int)
    values = column[task["column"]]
    return (values >= task["threshold"]).astype(int) if task.get("threshold") is not None else values.astype(int)


def baselines(coffer, config, checkpoint=None):
    recipe = json.loads(Path(config).read_text())
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([coffer, "split", "--config", config, "--out", work], check=True, capture_output=True)
        header, train = read_csv(Path(work) / "train.csv")
        _, validation = read_csv(Path(work) / "validation.csv")
    index = [header.index(name) for name in recipe["features"]]
    mean, std = train[:, index].mean(0), train[:, index].std(0)
    std[std == 0] = 1
    x_train, x_validation = (train[:, index] - mean) / std, (validation[:, index] - mean) / std
    coffer_metrics = {}
    if checkpoint:
        utility = (json.loads((Path(checkpoint) / "privacy.json").read_text()).get("evidence") or {}).get("utility") or {}
        coffer_metrics = utility.get("tasks", {})
    tasks = {}
    for task in recipe["tasks"]:
        if task["kind"] == "regression":
            continue
        y_train, y_validation = target(task, header, train), target(task, header, validation)
        row = {"metric": "accuracy" if task["kind"] == "classification" else "auc"}
        for name, model in (("logistic_regression", LogisticRegression(max_iter=2000)),
                            ("gradient_boosting", HistGradientBoostingClassifier(random_state=0))):
            model.fit(x_train, y_train)
            if task["kind"] == "classification":
                row[name] = float(accuracy_score(y_validation, model.predict(x_validation)))
            else:
                row[name] = float(roc_auc_score(y_validation, model.predict_proba(x_validation)[:, 1]))
        if task["name"] in coffer_metrics:
            row["coffer_private"] = coffer_metrics[task["name"]]["private"]
            row["coffer_non_private"] = coffer_metrics[task["name"]]["non_private"]
        tasks[task["name"]] = row
    return {"config": str(config), "train_rows": len(train), "validation_rows": len(validation), "tasks": tasks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coffer", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    report = baselines(args.coffer, args.config, args.checkpoint)
    Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    for name, row in report["tasks"].items():
        print(name, row)


if __name__ == "__main__":
    main()
