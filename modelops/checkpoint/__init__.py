"""Checkpoint I/O: the only part of modelops that opens weight files."""

from __future__ import annotations

from modelops.checkpoint.output import AtomicOutput, check_output_location, copy_support_files
from modelops.checkpoint.reader import Checkpoint, TensorInfo, read_safetensors_header
from modelops.checkpoint.remote import HeaderCheckpoint, open_headers
from modelops.checkpoint.source import ResolvedSource, resolve_source
from modelops.checkpoint.writer import CheckpointWriter, TensorSpec, parse_size, plan_shards

__all__ = [
    "AtomicOutput",
    "Checkpoint",
    "CheckpointWriter",
    "HeaderCheckpoint",
    "ResolvedSource",
    "TensorInfo",
    "TensorSpec",
    "check_output_location",
    "copy_support_files",
    "open_headers",
    "parse_size",
    "plan_shards",
    "read_safetensors_header",
    "resolve_source",
]
