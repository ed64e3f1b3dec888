"""Abort criteria over a rollout's finished executions. Pure.

An execution is *finished* when it ended succeeded, failed, rejected or timed out
(canceled ones do not count; a failure that will be retried is queued again and so not
counted until its retries are spent). A criterion fires when at least ``min_finished``
executions are finished and the share of its failure type is above its threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from schemas.rollouts import AbortCriterion, ExecutionStatus

__all__ = ["FINISHED", "abort_reason", "failure_share"]

FINISHED = (
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.FAILED,
    ExecutionStatus.REJECTED,
    ExecutionStatus.TIMED_OUT,
)


def failure_share(
    criterion: AbortCriterion, counts: Mapping[ExecutionStatus, int]
) -> tuple[int, float]:
    """(finished executions, percent of them matching the criterion's failure type)."""
    finished = sum(counts.get(s, 0) for s in FINISHED)
    if finished == 0:
        return 0, 0.0
    failed = sum(n for s, n in counts.items() if criterion.failure_type.matches(s))
    return finished, 100 * failed / finished


def abort_reason(
    criteria: Sequence[AbortCriterion], counts: Mapping[ExecutionStatus, int]
) -> str | None:
    """Why the rollout must abort now, or None."""
    for criterion in criteria:
        finished, share = failure_share(criterion, counts)
        if finished >= criterion.min_finished and share > criterion.threshold_percent:
            return (
                f"{criterion.failure_type.value} {share:.1f}% of {finished} finished "
                f"> {criterion.threshold_percent:g}%"
            )
    return None
