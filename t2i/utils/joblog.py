"""Logging for workflow jobs: one log file per job, secrets redacted, tqdm kept readable."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from t2i.utils.secrets import redact_text

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Masks secrets in every record before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True


class _RedactingStream:
    """A text stream that masks secrets before writing (wraps a job's stdout/stderr)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact_text(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()


@contextlib.contextmanager
def job_logging(log_path: str | Path | None, name: str) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr of the job to ``log_path`` (secrets masked)."""
    logger = logging.getLogger("t2i")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    redactor = RedactingFilter()
    handlers: list[logging.Handler] = []
    stream = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", encoding="utf-8", buffering=1)
        handlers.append(logging.StreamHandler(_RedactingStream(stream)))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        h.addFilter(redactor)
        root.addHandler(h)
    saved = sys.stdout, sys.stderr
    if stream is not None:
        sys.stdout = sys.stderr = _RedactingStream(stream)
    start = time.time()
    logger.info("%s: started", name)
    try:
        yield logger
        logger.info("%s: done in %.1f s", name, time.time() - start)
    except BaseException:
        logger.exception("%s: failed after %.1f s", name, time.time() - start)
        raise
    finally:
        sys.stdout, sys.stderr = saved
        for h in handlers:
            root.removeHandler(h)
        if stream is not None:
            stream.close()


def limit_cpu_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in this process (torch intra-op) and in the processes it starts.

    A job gets the cores its rule declares (``threads``, Slurm's ``--cpus-per-task``), not all
    of the machine's: jobs running side by side do not oversubscribe it, and a computation
    gives the same floats locally and on a cluster node of another size.
    """
    threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch  # late: logging alone must not need torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def workflow_job(smk, name: str) -> Iterator[logging.Logger]:
    """The frame of every ``workflow_scripts/`` job: the rule's ``threads`` and its ``log:`` file."""
    limit_cpu_threads(smk.threads)
    with job_logging(smk.log[0] if smk.log else None, name) as logger:
        yield logger
