"""GitHub Actions hygiene: actions pinned by commit, no token left in the checkout, secrets only in steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_with_their_version_named(path: Path) -> None:
    text = path.read_text()
    for step in _steps(yaml.safe_load(text)):
        if "uses" in step:
            assert PINNED.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned to a commit"
            line = next(x for x in text.splitlines() if step["uses"] in x)
            assert re.search(r"#\s*v\d+(\.\d+)*\s*$", line), f"{path.name}: {step['uses']} names no version"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkout_keeps_no_token_and_secrets_stay_in_steps(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    for step in _steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, path.name
    assert "secrets." not in yaml.safe_dump(workflow.get("env", {})), f"{path.name}: a secret in workflow env"
    for name, job in workflow["jobs"].items():
        assert job.get("permissions") == {"contents": "read"}, f"{path.name}: job {name} permissions"
