"""How a tower's session calls are formed (see scheduler.py for what each mode does)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PolicyName = Literal["sequence", "batch", "hybrid"]
POLICIES: tuple[PolicyName, ...] = ("sequence", "batch", "hybrid")


@dataclass(frozen=True)
class BatchPolicy:
    mode: PolicyName = "sequence"
    # On 2 cores length-sorted batches of 2-8 beat 32 or 64 (bench/RESULTS.md, raw sweep).
    max_batch: int = 8
    max_batch_tokens: int = 2048
    short_tokens: int = 64
    max_queue: int = 8192

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"unknown batching policy {self.mode!r}; expected one of {POLICIES}")
        if min(self.max_batch, self.max_batch_tokens, self.short_tokens, self.max_queue) < 1:
            raise ValueError("batch policy limits must be positive")
