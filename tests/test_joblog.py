"""The frame of every workflow job: its log file and the CPU threads its rule declares."""
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from t2i.utils.joblog import workflow_job


@pytest.fixture
def restore_threads(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_job_uses_its_rules_threads_and_logs_to_its_file(tmp_path, restore_threads):
    log = tmp_path / "logs" / "job.log"
    with workflow_job(SimpleNamespace(threads=1, log=[str(log)]), "demo job"):
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"  # for the processes the job starts (accelerate workers)
        logging.getLogger("t2i.demo").info("hello from inside")
        print("printed output")
    text = log.read_text()
    assert "demo job: started" in text and "hello from inside" in text and "printed output" in text
    assert "demo job: done" in text


def test_failing_job_logs_the_error(tmp_path, restore_threads):
    log = tmp_path / "job.log"
    with pytest.raises(ValueError):
        with workflow_job(SimpleNamespace(threads=2, log=[str(log)]), "bad job"):
            raise ValueError("the input is broken")
    assert "bad job: failed" in log.read_text() and "the input is broken" in log.read_text()
