"""The policy metrics of a running daemon: after jobs end, /metrics shows their polls and detection delays."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import write_jobs
from tests.serving import all_settled, eventually, running_daemon, server_config_text
from watcher.testing.fake_sendgrid import FakeSendGrid


async def test_metrics_show_polls_per_job_and_detection_delay(tmp_path: Path) -> None:
    """Polls per finished job add up to the polls the fake counted; each job's delay is observed once."""
    async with FakeSendGrid() as fake:
        fake.script_job("pd-1", outcome="completed", pending_for=0.3)
        fake.script_job("pd-2", outcome="completed", pending_for=0.1)
        fake.script_job("pd-3", outcome="failed", pending_for=0.2)
        jobs = write_jobs(tmp_path / "jobs.yaml", ["pd-1", "pd-2", "pd-3"])
        async with running_daemon(tmp_path, server_config_text(fake.base_url, tmp_path, jobs_file=jobs)) as daemon, \
                aiohttp.ClientSession() as http:
            assert daemon.server is not None
            url = daemon.server.url
            await eventually(lambda: all_settled(http, url, 3))
            async with http.get(f"{url}/metrics") as response:
                exposition = await response.text()
        polled = dict(fake.stats()["polls"])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exposition) for s in family.samples}
    done, failed = (("kind", "import"), ("outcome", "completed")), (("kind", "import"), ("outcome", "failed"))
    assert 2 == samples[("import_watcher_polls_per_job_count", done)]
    assert 1 == samples[("import_watcher_polls_per_job_count", failed)]
    assert polled["pd-1"] + polled["pd-2"] == samples[("import_watcher_polls_per_job_sum", done)]
    assert polled["pd-3"] == samples[("import_watcher_polls_per_job_sum", failed)]
    assert 2 == samples[("import_watcher_detection_delay_seconds_count", done)]
    assert 0 <= samples[("import_watcher_detection_delay_seconds_sum", done)] < 2 * 3  # 200 ms polls: well under
