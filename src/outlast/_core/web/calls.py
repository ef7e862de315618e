"""Guard calls bounded by the request budget: what ``web.call`` and friends do.

The Guard only starts a retry whose sleep ends before its timeout, so handing
it the rest of the request budget (minus `reserve`, the worst case of one
attempt) means a retry never starts unless it can finish inside the budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from outlast._core.faults.errors import RequestBudgetExceeded
from outlast._core.guard.first_use import mark_reached
from outlast._core.timing.budget import budget_remaining

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = [
    "acall_within_budget",
    "atransaction_within_budget",
    "budget_exceeded",
    "call_within_budget",
    "guard_retry_after",
    "timeout_for",
    "transaction_within_budget",
]

T = TypeVar("T")


def guard_retry_after(guard: Guard | None) -> float | None:
    """The Guard's ``retry_after`` (None without a Guard or if it cannot say)."""
    if guard is None:
        return None
    try:
        return float(guard.retry_after)
    except Exception:  # a broken guard must not turn a 503 into a 500
        return None


def budget_exceeded(guard: Guard | None) -> RequestBudgetExceeded:
    """The error for a request whose budget ran out (a 503 that says when to come back)."""
    return RequestBudgetExceeded(
        "request budget exhausted", retry_after=guard_retry_after(guard) or 1.0
    )


def timeout_for(guard: Guard, reserve: float) -> float | None:
    """The timeout to hand to the Guard: the rest of the budget minus one attempt.

    None outside a request (the Guard's own retry timeout applies). Raises
    `RequestBudgetExceeded` when nothing is left. The request counts as one
    that reached for the database from here on.
    """
    mark_reached()
    remaining = budget_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise budget_exceeded(guard)
    return max(remaining - reserve, 0.0)


def call_within_budget(
    guard: Guard, fn: Callable[..., T], /, *args: Any, reserve: float = 0.0, **kwargs: Any
) -> T:
    """``guard.call`` with the rest of the request budget as its timeout."""
    kwargs.setdefault("timeout", timeout_for(guard, reserve))
    return guard.call(fn, *args, **kwargs)


async def acall_within_budget(
    guard: Guard,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.acall`` with the rest of the request budget as its timeout."""
    kwargs.setdefault("timeout", timeout_for(guard, reserve))
    return await guard.acall(fn, *args, **kwargs)


def transaction_within_budget(
    guard: Guard,
    source: Any,
    fn: Callable[..., T],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.transaction`` with the rest of the request budget as its timeout."""
    kwargs.setdefault("timeout", timeout_for(guard, reserve))
    return guard.transaction(source, fn, *args, **kwargs)


async def atransaction_within_budget(
    guard: Guard,
    source: Any,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    reserve: float = 0.0,
    **kwargs: Any,
) -> T:
    """``guard.atransaction`` with the rest of the request budget as its timeout."""
    kwargs.setdefault("timeout", timeout_for(guard, reserve))
    return await guard.atransaction(source, fn, *args, **kwargs)
