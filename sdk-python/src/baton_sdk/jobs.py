"""Durable jobs of this tenant: work no client waits for (billing, syncs,
reports). A job is kept by the host across hot swaps, crashes, host restarts
and failover, and runs at least once through `Plugin.on_job(job, payload)`,
on whatever version is current then, one call at a time with the tenant's
frames. Make a job idempotent (it may run twice if the host dies in the
middle) and put a layout number in its payload if later versions will read it.

    # Daily at 00:05 UTC; declaring it again in every `init` changes nothing.
    jobs.schedule("daily-bill", "5 0 * * *", "bill", b"{}")
    # Once, in a minute, at most once per invoice at a time.
    jobs.enqueue("send-invoice", b'{"invoice":42}', delay_ms=60_000, unique_key="invoice-42")

`on_job` returns how the attempt ended: `done()` (or None), `failed(error)`
(retried per the job's policy), `snooze(ms)` (again later, without using up
an attempt) or `discard(reason)` (given up, kept as dead). An exception in
`on_job` is `failed(<the traceback>)`."""

from . import _wit
from .errors import JobError


def _payload(payload):
    if payload is None:
        return b""
    return payload.encode() if isinstance(payload, str) else bytes(payload)


class RetryPolicy:
    """How often a failed job is tried again: `max_attempts` in all (1: no
    retry; the host caps it at 25), the delay before attempt n+1 being
    `base_delay_ms * 2^(n-1)`, at most `max_delay_ms` (within +-10 %). The
    defaults are the host's own policy: 20 attempts, 15 s doubling up to 24 h."""

    __slots__ = ("max_attempts", "base_delay_ms", "max_delay_ms")

    def __init__(self, max_attempts=20, base_delay_ms=15_000, max_delay_ms=86_400_000):
        self.max_attempts = int(max_attempts)
        self.base_delay_ms = int(base_delay_ms)
        self.max_delay_ms = int(max_delay_ms)

    def to_wit(self):
        return _wit.imports("jobs").RetryPolicy(self.max_attempts, self.base_delay_ms, self.max_delay_ms)

    def __eq__(self, other):
        return isinstance(other, RetryPolicy) and (
            self.max_attempts,
            self.base_delay_ms,
            self.max_delay_ms,
        ) == (other.max_attempts, other.base_delay_ms, other.max_delay_ms)

    def __repr__(self):
        return f"RetryPolicy({self.max_attempts}, {self.base_delay_ms}, {self.max_delay_ms})"


def _retry(retry):
    if retry is None:
        return None
    if isinstance(retry, RetryPolicy):
        return retry.to_wit()
    w = _wit.imports("jobs")
    if isinstance(retry, w.RetryPolicy):
        return retry
    return RetryPolicy(*retry).to_wit()


def enqueue(kind, payload=b"", *, delay_ms=0, retry=None, unique_key=None, unique_for_ms=0, timeout_ms=None):
    """Enqueues a job of `kind` with `payload` (bytes, or a str as UTF-8; at
    most 64 KiB); returns its id (an int).

    - `delay_ms`: run it no sooner than this (0: as soon as possible).
    - `retry`: a `RetryPolicy` (or a tuple of its three numbers); None: the
      host's (20 attempts, 15 s doubling up to 24 h).
    - `unique_key`: at most one job with this key is pending or running; a
      second one raises `JobError` of kind "duplicate" (`exc.job_id`: the
      first one's id)...
    - `unique_for_ms`: ...and also for this long after the first was
      enqueued, even if it ran (0: only while pending or running).
    - `timeout_ms`: a bound on one attempt (None: the host's call timeout);
      running past it is a failed attempt.

    Raises `JobError` (too-large, too-many, duplicate, invalid, unavailable)."""
    w = _wit.imports("jobs")
    options = w.Options(
        int(delay_ms),
        _retry(retry),
        None if unique_key is None else str(unique_key),
        int(unique_for_ms),
        None if timeout_ms is None else int(timeout_ms),
    )
    return _wit.call(JobError, w.enqueue, str(kind), _payload(payload), options)


def cancel(job_id):
    """Cancels a job that has not started; `False` if it is running, done,
    dead or unknown."""
    return _wit.call(JobError, _wit.imports("jobs").cancel, int(job_id))


def schedule(name, cron, kind, payload=b""):
    """Runs a job of `kind` with `payload` at every slot of `cron` (UTC;
    five fields: minute hour day-of-month month day-of-week, or six with
    seconds first), named `name`. Declaring the same schedule again changes
    nothing, so declare it in `init`; a changed expression or payload
    replaces it. A bad expression raises `JobError` of kind "invalid"."""
    _wit.call(JobError, _wit.imports("jobs").schedule, str(name), str(cron), str(kind), _payload(payload))


def unschedule(name):
    """Removes a schedule; `False` if there was none."""
    return _wit.call(JobError, _wit.imports("jobs").unschedule, str(name))


class Info:
    """What `on_job` is told about the job it runs: `id`, `kind`, `attempt`
    (from 1), `max_attempts`, `enqueued_ms` and `scheduled_ms` (when it was
    enqueued, when this attempt was due; ms since the Unix epoch), and
    `schedule` (the name of the schedule that enqueued it, or None)."""

    __slots__ = ("id", "kind", "attempt", "max_attempts", "enqueued_ms", "scheduled_ms", "schedule")

    def __init__(self, id, kind, attempt=1, max_attempts=1, enqueued_ms=0, scheduled_ms=0, schedule=None):
        self.id = int(id)
        self.kind = kind
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.enqueued_ms = enqueued_ms
        self.scheduled_ms = scheduled_ms
        self.schedule = schedule

    @classmethod
    def from_wit(cls, job):
        return cls(
            job.id, job.kind, job.attempt, job.max_attempts, job.enqueued_ms, job.scheduled_ms, job.schedule
        )

    @property
    def is_last_attempt(self):
        """Whether a failure now makes the job dead."""
        return self.attempt >= self.max_attempts

    def __repr__(self):
        return f"Info(id={self.id}, kind={self.kind!r}, attempt={self.attempt}/{self.max_attempts})"


class Outcome:
    """How an attempt ended; make one with `done()`, `failed(error)`,
    `snooze(ms)` or `discard(reason)`. `kind` is the WIT case ("done",
    "failed", "snooze", "discard"), `value` its payload (None for done)."""

    __slots__ = ("kind", "value")

    def __init__(self, kind, value=None):
        if kind not in ("done", "failed", "snooze", "discard"):
            raise ValueError(f"no job outcome {kind!r}")
        self.kind = kind
        self.value = value

    def to_wit(self):
        w = _wit.imports("jobs")
        if self.kind == "done":
            return w.JobOutcome_Done()
        if self.kind == "failed":
            return w.JobOutcome_Failed(str(self.value))
        if self.kind == "snooze":
            return w.JobOutcome_Snooze(int(self.value))
        return w.JobOutcome_Discard(str(self.value))

    def __eq__(self, other):
        return isinstance(other, Outcome) and (self.kind, self.value) == (other.kind, other.value)

    def __repr__(self):
        return f"Outcome({self.kind!r})" if self.value is None else f"Outcome({self.kind!r}, {self.value!r})"


def done():
    """The job is done: it is removed."""
    return Outcome("done")


def failed(error):
    """The attempt failed with `error` (a str, or an exception): the job is
    tried again per its retry policy, and dead when its attempts are used up."""
    return Outcome("failed", error if isinstance(error, str) else (str(error) or type(error).__name__))


def snooze(ms):
    """Not now: run it again after `ms` milliseconds, without using up an attempt."""
    ms = int(ms)
    if ms < 0:
        raise ValueError(f"cannot snooze for {ms} ms")
    return Outcome("snooze", ms)


def discard(reason):
    """Give up without retrying: the job is kept as dead with `reason`."""
    return Outcome("discard", str(reason))


def to_wit_outcome(outcome):
    """Accepts an `Outcome`, the bindings' own, or None (done)."""
    if outcome is None:
        return done().to_wit()
    if isinstance(outcome, Outcome):
        return outcome.to_wit()
    w = _wit.imports("jobs")
    if isinstance(outcome, (w.JobOutcome_Done, w.JobOutcome_Failed, w.JobOutcome_Snooze, w.JobOutcome_Discard)):
        return outcome
    raise TypeError(
        f"on_job must return jobs.done(), failed(error), snooze(ms), discard(reason) or None, "
        f"not {type(outcome).__name__}"
    )
