"""The online store and the prediction log on PostgreSQL (as several replicas or machines share them), the server
stopped and started under load (see :mod:`tests.serving.test_faults`).

While the server is down every read fails at once (connection refused): answers are degraded (scored without the
card's past, flagged, counted), never 500s; the transactions wait in the replica's store backlog and the log's
retry buffer, and reach PostgreSQL once it is back. The champion comes from a SQLite tracking store here (MLflow
is not the fault under test).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PgCluster, pg_cluster
from tests.serving.test_faults import Load, Service, _lost, _settled, running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, PgCluster]]:
    tmp = tmp_path_factory.mktemp("faults-pg")
    with pg_cluster() as cluster, running_service(tmp, cluster.dsn, mlflow_server=False,
                                                   prediction_log=cluster.dsn) as served:
        yield served, cluster


def test_postgres_stopped_and_started_under_load(pg_service: tuple[Service, PgCluster]) -> None:
    service, cluster = pg_service
    with Load(service, max_s=60) as load:
        time.sleep(1.5)
        cluster.stop()
        down_at = len(load.outcome.answered)
        time.sleep(4.0)
        ready_down = service.ready()
        during, log_during = ready_down["store"], ready_down["prediction_log"]
        cluster.start()
        deadline = time.monotonic() + 30
        while service.ready()["store"]["pending_rows"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    outcome = load.outcome
    ready = _settled(service)
    lost_store, lost_log = _lost(service, outcome.answered)
    summary = {**outcome.summary(), "lost_store": lost_store, "lost_log": lost_log,
               "written_late": ready["store"]["written_late"]}
    report = os.environ.get("FRAUD_FAULTS_REPORT")
    if report:
        path = Path(report)
        known = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**known, "postgres_stopped_4s": summary}, indent=2) + "\n")
    assert 500 not in outcome.statuses and set(outcome.statuses) == {200}, outcome.statuses
    assert len(outcome.answered) > down_at + 50  # answered while down and after
    assert during["failed_reads"] >= 1 and during["pending_rows"] > 0, during
    assert outcome.degraded > 0 and ready["store"]["written_late"] > 0
    assert (lost_store, lost_log) == (0, 0) and ready["store"]["dropped_rows"] == 0
    assert ready["store"]["error"] is None
    assert log_during["error"] is not None and ready["prediction_log"]["error"] is None
    assert ready["prediction_log"]["dropped"] == 0
