"""dvc.yaml stays wired to the code: every dep exists, every param key exists in params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
OUTPUTS = {"data/transactions"} | {
    next(iter(o)) if isinstance(o, dict) else o
    for s in STAGES.values() for o in [*s.get("outs", []), *s.get("metrics", [])]
}


def _lookup(key: str) -> object:
    node: object = PARAMS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_runs_its_own_module_and_lists_it_as_a_dep(stage: str) -> None:
    spec = STAGES[stage]
    assert spec["cmd"] == f"python -m fraud_assets.stages.{stage}"
    assert f"fraud_assets/stages/{stage}.py" in spec["deps"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_exist_or_are_pipeline_outputs(stage: str) -> None:
    missing = [d for d in STAGES[stage]["deps"] if d not in OUTPUTS and not (ROOT / d).exists()]
    assert missing == []


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_params_are_keys_of_params_yaml(stage: str) -> None:
    keys = STAGES[stage].get("params", [])
    for key in keys:
        assert _lookup(key) is not None, f"{stage}: params key {key} is not in params.yaml"


def test_evaluation_is_a_metric_kept_in_git() -> None:
    (metric,) = STAGES["evaluate"]["metrics"]
    assert metric == {"metrics/evaluation.json": {"cache": False}}


def test_lookup_rejects_an_unknown_key() -> None:
    with pytest.raises(KeyError):
        _lookup("train.no_such_key")
