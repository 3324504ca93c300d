"""Helpers of the paid-jobs tests: a clock the test moves, and services made for the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict

from desired_state.services.builtin import builtin_definitions
from desired_state.services.definitions import AnyObject, RateLimit, ServiceDefinition, ServiceRegistry
from desired_state.services.vocabulary import Runtime

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """``now`` only moves when the test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class TaskInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = 0


LIMITED = "test.limited"
GATED = "test.gated"
SHORT = "test.short"
RERUN = "test.rerun"
FREE = "test.free"
PRICY = "test.pricy"


def definitions_for_tests() -> list[ServiceDefinition]:
    return [
        ServiceDefinition(
            id=LIMITED,
            summary="2 per minute, 3 per hour",
            runtime=Runtime.JOB,
            cost_credits=1,
            input_model=TaskInput,
            output_model=AnyObject,
            rate_limit=RateLimit(per_minute=2, per_hour=3),
        ),
        ServiceDefinition(
            id=GATED,
            summary="course gated",
            runtime=Runtime.JOB,
            cost_credits=2,
            input_model=TaskInput,
            output_model=AnyObject,
            course_id="media-101",
        ),
        ServiceDefinition(
            id=SHORT,
            summary="10 s timeout",
            runtime=Runtime.JOB,
            cost_credits=3,
            input_model=TaskInput,
            output_model=AnyObject,
            timeout_seconds=10,
        ),
        ServiceDefinition(
            id=RERUN,
            summary="idempotent, 2 attempts",
            runtime=Runtime.JOB,
            cost_credits=4,
            input_model=TaskInput,
            output_model=AnyObject,
            timeout_seconds=100,
            idempotent=True,
            max_attempts=2,
        ),
        ServiceDefinition(
            id=FREE,
            summary="free",
            runtime=Runtime.JOB,
            cost_credits=0,
            input_model=TaskInput,
            output_model=AnyObject,
        ),
        ServiceDefinition(
            id=PRICY,
            summary="costs 50",
            runtime=Runtime.JOB,
            cost_credits=50,
            input_model=TaskInput,
            output_model=AnyObject,
        ),
    ]



def registry() -> ServiceRegistry:
    """The built-in services plus the ones above."""
    return ServiceRegistry([*builtin_definitions(), *definitions_for_tests()])
