"""Scoring many slides on a Ray cluster: ``smr score-slides SOURCE --out DIR --ray [ADDRESS]``.

Each slide is one Ray task that scores it with :func:`~smr.clients.scoring.score_slide` (through
:func:`~smr.clients.batch.run_jobs`, so a failing slide is reported as the plain loop reports it)
into ``DIR/<name>/`` with its own client and its own journal. Every detection ends up in the
slide's outputs exactly once:

- the journal keeps each answered batch and ``score_slide`` resumes from it, so a task that Ray
  runs again after its worker (or node) died continues where the dead one stopped (the journal's
  lock dies with the process);
- Ray retries a task whose worker died (``max_retries``); ``--restart`` discards an earlier run on
  a task's first attempt only (a marker file in the slide's folder tells a retry);
- the client retries and fails over between the ``--url`` servers (:mod:`.endpoints`), so a
  server lost mid-run costs nothing when another one serves; a slide whose servers all stay away
  beyond the retry budget fails like in the plain loop, and running the command again continues it.

``ADDRESS`` is a running cluster's (``auto``, ``ray://HOST:10001``); without one a local cluster
is started for the run, its workers at the priority of the command (``RAY_worker_niceness``, 0
unless set; Ray's own default is 15). ``DIR`` and the slides must be at the same paths on every
node (a shared filesystem), and every node needs SMR installed (``pip install 'smr[ray]'``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .batch import JobOutcome, SlideJob, run_jobs
from .client import SMRClient
from .errors import InputError
from .scoring import score_slide

__all__ = ["TASK_RETRIES", "require_ray", "run_jobs_on_ray", "score_job"]

log = logging.getLogger(__name__)

#: How often Ray runs a slide's task again after its worker died (each attempt resumes the journal).
TASK_RETRIES = 3
_ATTEMPT_MARKER = ".smr-ray-attempt-{run}"
#: Ray starts its workers at nice 15 unless this says otherwise; a local cluster started for one
#: `score-slides` run would then yield the CPU to everything else on the machine.
WORKER_NICENESS = "RAY_worker_niceness"


def require_ray() -> Any:
    """The ``ray`` module, or :class:`InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray, which is not installed: pip install 'smr[ray]'") from None
    return ray


def score_job(
    job: SlideJob,
    out_dir: Path,
    make_client: Callable[[], SMRClient],
    options: dict[str, Any],
    run: str,
) -> JobOutcome:
    """One slide, in a Ray worker: ``score_slide`` into ``out_dir / job.name`` with a new client.

    ``options`` are ``score_slide``'s keyword arguments; ``restart`` applies to the first attempt of
    run ``run`` only, so that a retried task resumes the journal its dead predecessor wrote.
    """
    folder = Path(out_dir) / job.name
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / _ATTEMPT_MARKER.format(run=run)
    first_attempt = not marker.exists()
    marker.touch()
    kwargs = {**options, "restart": bool(options.get("restart")) and first_attempt, "progress": False}

    def score(j: SlideJob):
        with make_client() as client:
            return score_slide(j.slide, j.detections, folder, client, **kwargs)

    (outcome,) = run_jobs([job], score, parallel=1)
    marker.unlink(missing_ok=True)
    return outcome


def run_jobs_on_ray(
    jobs: Sequence[SlideJob],
    out_dir: str | Path,
    make_client: Callable[[], SMRClient],
    options: dict[str, Any],
    *,
    address: str | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
    task_retries: int = TASK_RETRIES,
) -> list[JobOutcome]:
    """Score ``jobs`` as Ray tasks (one per slide, one CPU each); outcomes in the order of ``jobs``.

    ``make_client`` (picklable; called in each task) makes the task's client; ``options`` are
    ``score_slide``'s keyword arguments. Uses the Ray runtime of this process when one is
    initialised, else connects to ``address`` or, without one, starts a local cluster for the run.
    ``on_done`` is called in this process as each slide finishes (progress).
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        if not address:  # a local cluster: its workers as urgent as this command (Ray's default: nice 15)
            os.environ.setdefault(WORKER_NICENESS, "0")
        try:
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"--ray {address or ''}: cannot start or reach a Ray cluster ({exc}); give the address of "
                "a running one (`ray start --head` prints it) or leave it out for a local cluster"
            ) from None
    try:
        task = ray.remote(num_cpus=1, max_retries=task_retries)(score_job)
        run = uuid.uuid4().hex
        out_dir = Path(out_dir).resolve()
        refs = {task.remote(job, out_dir, make_client, options, run): job for job in jobs}
        outcomes: dict[str, JobOutcome] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                job = refs[ref]
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # its worker died at every attempt, or Ray failed
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    outcome = JobOutcome(job, error=f"Ray task failed after {task_retries} retries: {first}")
                outcomes[job.name] = outcome
                if on_done is not None:
                    on_done(outcome)
        return [outcomes[j.name] for j in jobs]
    finally:
        if started:
            ray.shutdown()
