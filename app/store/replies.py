"""Redis replies as text.

The store's clients do not decode responses, so a string reply is `bytes`; redis-py types it
`bytes | str`, since a client made with `decode_responses=True` gets `str`. This takes either.
"""

from __future__ import annotations


def as_text(reply: bytes | str) -> str:
    """A Redis string reply as text (UTF-8). Raises UnicodeDecodeError for bytes that are not UTF-8."""
    return reply.decode() if isinstance(reply, bytes) else reply
