"""Data pipeline: raw published training sets -> chat records -> loss-masked token batches.

* :mod:`prolora.data.formats`: reformatters (SuperNI, Flan V2, CoT, CodeAlpaca, messages/ShareGPT).
* :mod:`prolora.data.records`: the record shape, validation, skip reports, ``load_records``.
* :mod:`prolora.data.chat`: open-instruct's chat format and ``tokenize_example`` (assistant-only labels).
* :mod:`prolora.data.batching`: ``TokenizedDataset``, ``LengthGroupedSampler`` (resumable), ``PadCollator``.
"""

from prolora.data.batching import (
    LengthGroupedSampler,
    PadCollator,
    PaddingCollator,
    TokenizedDataset,
    plan_epoch,
    tokenize_records,
)
from prolora.data.chat import (
    IGNORE_INDEX,
    format_messages,
    prompt_for_generation,
    prompt_for_messages,
    tokenize_example,
)
from prolora.data.formats import CONVERTERS, convert, get_converter, superni_prompt
from prolora.data.records import SkipReport, load_records, read_records, validate_messages, write_records

__all__ = ["CONVERTERS", "IGNORE_INDEX", "LengthGroupedSampler", "PadCollator", "PaddingCollator", "SkipReport",
           "TokenizedDataset", "convert", "format_messages", "get_converter", "load_records", "plan_epoch",
           "prompt_for_generation", "prompt_for_messages", "read_records", "superni_prompt", "tokenize_example",
           "tokenize_records", "validate_messages", "write_records"]
