"""Data pipeline: raw published training sets -> chat records -> loss-masked token batches.

* :mod:`prolora.data.formats`: reformatters (SuperNI, Flan V2, CoT, CodeAlpaca, messages/ShareGPT).
* :mod:`prolora.data.records`: the record shape, validation, skip reports, ``load_records``.
* :mod:`prolora.data.chat`: open-instruct's chat format (training and evaluation prompts) and
  ``tokenize_example`` (assistant-only labels).
* :mod:`prolora.data.batching`: ``TokenizedDataset``, ``LengthGroupedSampler`` (resumable), ``PadCollator``.
"""

from prolora.data.batching import LengthGroupedSampler, PadCollator, TokenizedDataset
from prolora.data.chat import IGNORE_INDEX, format_messages, prompt_for_generation, tokenize_example
from prolora.data.formats import CONVERTERS, get_converter, superni_prompt
from prolora.data.records import SkipReport, load_records, read_records, validate_messages, write_records

__all__ = ["CONVERTERS", "IGNORE_INDEX", "LengthGroupedSampler", "PadCollator", "SkipReport", "TokenizedDataset",
           "format_messages", "get_converter", "load_records", "prompt_for_generation", "read_records",
           "superni_prompt", "tokenize_example", "validate_messages", "write_records"]
