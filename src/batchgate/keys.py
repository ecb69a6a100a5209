"""Names of the blobs a job keeps in the store."""

from __future__ import annotations


def payload_key(job_id: str) -> str:
    """A plain job's payload, when too large to travel in the queue message."""
    return f"payloads/{job_id}"


def result_key(job_id: str) -> str:
    """A plain job's result, when too large to keep in the job record."""
    return f"results/{job_id}"


def chunk_input_key(job_id: str, chunk: int) -> str:
    """One chunk of a map job's items (NDJSON)."""
    return f"inputs/{job_id}/{chunk:08d}.ndjson"


def chunk_result_key(job_id: str, chunk: int) -> str:
    """One chunk of a map job's results (NDJSON, in item order)."""
    return f"outputs/{job_id}/{chunk:08d}.ndjson"


def map_result_key(job_id: str) -> str:
    """A finished map job's result manifest: how many chunks make up its output."""
    return f"outputs/{job_id}/manifest.json"


def map_prefixes(job_id: str) -> tuple[str, str]:
    """Every blob prefix a map job writes under."""
    return f"inputs/{job_id}/", f"outputs/{job_id}/"
