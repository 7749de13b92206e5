"""Prompts too long for the model: found once before training, then dropped (counted, each named) or refused.

A prompt is too long when it and the longest completion (`max_new_tokens`) would not fit the model's positions
(`max_position_embeddings`), or when it has more tokens than the data setting `max_prompt_tokens`. Left in, such a
prompt either indexes past the model's positions or makes one batch's attention quadratic in its length (a
3,000-token prompt in a warm-start batch of 64 took minutes and 7 GB on CPU). Memory stays bounded while checking:
a line over the task's `max_record_bytes` is refused when read (datamodules/records.py), and prompts are tokenized
one at a time, keeping only their lengths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from datamodules.records import DataError
from datamodules.types import PromptRecord

log = logging.getLogger(__name__)

LongPromptAction = Literal["drop", "error"]
#: dropped records named one by one before the rest are only counted
MAX_NAMED = 10


@dataclass(frozen=True)
class PromptLimit:
    """The most prompt tokens a record may have, and why (for messages)."""

    tokens: int
    why: str

    @staticmethod
    def tightest(max_prompt_tokens: int | None, context: int | None, max_new_tokens: int) -> PromptLimit | None:
        """The tighter of `max_prompt_tokens` (a data setting) and the room a model with `context` positions leaves
        after `max_new_tokens` generated tokens; None when neither applies. A context with no room left for any
        prompt is a DataError (a setting to change, not data to drop)."""
        limits = []
        if max_prompt_tokens is not None:
            limits.append(PromptLimit(max_prompt_tokens, f"data.max_prompt_tokens={max_prompt_tokens}"))
        if context is not None:
            room = context - max_new_tokens
            if room < 1:
                raise DataError(f"the model has {context} positions and max_new_tokens is {max_new_tokens}: no room "
                                f"is left for a prompt; lower max_new_tokens")
            limits.append(PromptLimit(room, f"the model's {context} positions minus max_new_tokens={max_new_tokens}"))
        return min(limits, key=lambda limit: limit.tokens) if limits else None


def where(record: PromptRecord) -> str:
    """`record <id> (<file>:<line>)`, or without the place for a generated record."""
    return f"record {record.id!r}" + (f" ({record.source})" if record.source else "")


def drop_long_prompts(records: Sequence[PromptRecord], count_tokens: Callable[[PromptRecord], int],
                      limit: PromptLimit, on_long: LongPromptAction, what: str,
                      announce: bool = True) -> list[PromptRecord]:
    """The records whose prompts have at most `limit.tokens` tokens. With on_long="error" the first longer one is a
    DataError naming it (id, file and line); with "drop" each is left out and logged (the first MAX_NAMED by name,
    then a count; `announce=False`: silently, for all but one rank). `what` names the set ("training", "validation")
    in messages; none left is a DataError."""
    kept, dropped = [], 0
    for record in records:
        tokens = count_tokens(record)
        if tokens <= limit.tokens:
            kept.append(record)
            continue
        if on_long == "error":
            raise DataError(f"{where(record)}: the prompt is {tokens} tokens, over {limit.why}; shorten or remove "
                            f"it, or set data.on_long_prompt: drop to leave such records out")
        dropped += 1
        if announce and dropped <= MAX_NAMED:
            log.warning("inferl: dropped %s %s: the prompt is %d tokens, over %s", what, where(record), tokens,
                        limit.why)
    if announce and dropped:
        log.warning("inferl: dropped %d of %d %s records with prompts over %s (data.on_long_prompt: drop)%s",
                    dropped, len(records), what, limit.why, "" if dropped <= MAX_NAMED else "; the first "
                    f"{MAX_NAMED} are named above")
    if records and not kept:
        raise DataError(f"every one of the {len(records)} {what} records has a prompt over {limit.why}; raise the "
                        f"limit (data.max_prompt_tokens, or a model with more positions / a lower max_new_tokens)")
    return kept
