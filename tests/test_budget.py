"""Key budgets: the client counts token ids per key, warns past the budget, refuses past the hard limit."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.cli import main
from eeonnx.client.budget import (KeyBudgetError, KeyBudgetWarning, budget_from_curve, curve_from_audit,
                                  set_budget, tokens_at)

ROOT = Path(__file__).resolve().parent.parent
BERT = ROOT / "models" / "fixtures" / "bert.ts.onnx"


def test_tokens_at_interpolates_in_log_tokens():
    curve = [(10, 0.1), (1000, 0.3)]
    assert tokens_at(curve, 0.2) == 100  # halfway between 10 and 1000 in log scale
    assert tokens_at(curve, 0.1) == 10
    assert tokens_at(curve, 0.9) == 1000  # past the last point: the curve says nothing more
    b = budget_from_curve(curve, "hand", target=0.1, hard_target=0.2)
    assert (b["tokens"], b["hard_limit"]) == (10, 100)
    with pytest.raises(ValueError):
        budget_from_curve(curve, "hand", target=0.3, hard_target=0.2)


def test_curve_from_audit_finds_the_curve():
    data = {"attacks": [{"name": "x"}, {"name": "frequency",
                                         "curve": [{"tokens": 1000, "recovered": 0.1},
                                                   {"tokens": 10000, "recovered": 0.3}]}]}
    assert curve_from_audit(data) == [(1000, 0.1), (10000, 0.3)]
    assert curve_from_audit({"nothing": [1, 2]}) == []


@pytest.fixture()
def bert(tmp_path):
    out = tmp_path / "bert"
    eeonnx.compile(BERT, out)
    return out


def _feeds(n=7):
    return {"input_ids": np.arange(1, n + 1, dtype=np.int64)[None], "attention_mask": np.ones((1, n), np.int64),
            "token_type_ids": np.zeros((1, n), np.int64)}


def test_manifest_states_a_budget_for_token_models_only(bert, tmp_path):
    b = json.loads((bert / "client" / "manifest.json").read_text())["key_budget"]
    assert b["input"] == "input_ids" and 0 < b["tokens"] <= b["hard_limit"]
    assert "not measured on this artifact" in b["source"]
    eeonnx.compile(ROOT / "models" / "cnn.onnx", tmp_path / "cnn")
    assert json.loads((tmp_path / "cnn" / "client" / "manifest.json").read_text())["key_budget"] is None


def test_budget_warning_refusal_and_override(bert, tmp_path):
    set_budget(bert, {"input": "input_ids", **budget_from_curve([(10, 0.1), (20, 0.25)], "test")})
    client = eeonnx.Client(bert)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.encode(_feeds())  # 7 tokens: within the budget of 10, no warning
    with pytest.warns(KeyBudgetWarning, match="budget of 10"):
        client.encode(_feeds())  # 14
    path = bert / "client" / "budget.json"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text())["tokens"] == 14
    again = eeonnx.Client(bert)  # persisted across clients
    with pytest.raises(KeyBudgetError, match="hard limit of 20"):
        again.encode(_feeds())  # 21 > 20
    assert json.loads(path.read_text())["tokens"] == 14  # a refused request is not counted
    over = eeonnx.Client(bert, allow_over_budget=True)
    enc = over.encode(_feeds())
    assert enc and json.loads(path.read_text())["tokens"] == 21
    # CLI: run refuses past the limit, --allow-over-budget passes
    for name, x in _feeds().items():
        np.save(tmp_path / f"{name}.npy", x)
    args = ["run", str(bert)] + [f"--input={n}={tmp_path / n}.npy" for n in _feeds()]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "hard limit" in r.output
    r = CliRunner().invoke(main, args + ["--allow-over-budget"])
    assert r.exit_code == 0, r.output
    # a fresh key starts from zero
    from eeonnx.compiler.rekey import rekey

    rekey(bert, tmp_path / "bert2")
    assert not (tmp_path / "bert2" / "client" / "budget.json").exists()
    eeonnx.Client(tmp_path / "bert2").encode(_feeds())


def test_budget_command_from_audit(bert, tmp_path):
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"frequency": {"curve": [{"tokens": 100, "recovered": 0.05},
                                                          {"tokens": 10000, "recovered": 0.15},
                                                          {"tokens": 100000, "recovered": 0.35}]}}))
    r = CliRunner().invoke(main, ["budget", str(bert), "--from-audit", str(audit)])
    assert r.exit_code == 0, r.output
    b = json.loads((bert / "client" / "manifest.json").read_text())["key_budget"]
    assert b["tokens"] == 1000 and b["source"].startswith("measured by eeonnx audit")
    assert 10000 < b["hard_limit"] < 100000
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = CliRunner().invoke(main, ["budget", str(bert), "--from-audit", str(bad)])
    assert r.exit_code == 2 and "no frequency-attack curve" in r.output
