"""What may come in: the closed set of message outcomes, topic parsing, and turning a refused payload into a reason.

Everything here treats its input as hostile: topics and payloads come from whoever can publish on the broker. Text
taken from them for a log line goes through `printable` first, so it never carries control codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pydantic_core
from pydantic import ValidationError

from probe.messages import TOPIC_ROOT
from probe.results import SCHEMA_VERSION

# A 12-path result with every stage and detail line is ~8 KiB of JSON; this leaves room for growth and refuses
# what can only be garbage before it costs a parse.
MAX_PAYLOAD = 256 * 1024
_ROOT = tuple(TOPIC_ROOT.split("/"))


class Outcome(StrEnum):
    """What became of a message: `wgprobe_messages_total{result}`. Closed, so it is safe as a label."""

    accepted = "accepted"
    malformed = "malformed"  # not JSON, or JSON that is not the message model
    oversized = "oversized"  # larger than MAX_PAYLOAD
    unknown_schema = "unknown_schema"  # schema_version is not one this aggregator speaks
    topic_mismatch = "topic_mismatch"  # the topic is not a v1 topic of its kind, or names another agent or server
    unknown_server = "unknown_server"  # a relay the aggregator's inventory does not hold
    duplicate = "duplicate"  # a result_id already ingested from that agent (an at-least-once re-send)
    agent_limit = "agent_limit"  # a new agent name past the store's bound on agents
    # An empty payload: MQTT's way to delete a retained message (an agent clearing a relay it dropped, an operator a
    # retired agent's results or status); the broker hands it to subscribers too. Nothing wrong with it: the store
    # forgets what it deleted.
    cleared = "cleared"


DROP_REASONS: tuple[Outcome, ...] = tuple(outcome for outcome in Outcome if outcome is not Outcome.accepted)


@dataclass(frozen=True, slots=True)
class Ingested:
    """What became of one message. A drop with `first_from_sender` set is the one to log; later ones only count."""

    outcome: Outcome
    sender: str | None = None  # the agent the topic names (printable), None when it names none
    first_from_sender: bool = False
    detail: str = ""  # one printable line on why it was dropped

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.accepted


def printable(text: str, limit: int = 200) -> str:
    """`text` with control and other non-printable characters escaped, cut to `limit` characters."""
    if text.isprintable():
        return text[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 2])[:limit]


def result_topic_names(topic: str) -> tuple[str, str] | None:
    """(agent, server) of wgprobe/v1/results/<agent>/<server>, else None."""
    parts = topic.split("/")
    if len(parts) != len(_ROOT) + 3 or tuple(parts[: len(_ROOT)]) != _ROOT or parts[len(_ROOT)] != "results":
        return None
    agent, server = parts[len(_ROOT) + 1 :]
    return (agent, server) if agent and server else None


_ID_KEY = b'"result_id":"'
_ID_BYTES = 64 * 4  # ResultMessage.result_id is at most 64 characters, of at most 4 bytes each in UTF-8


def claimed_result_id(payload: bytes | bytearray) -> str | None:
    """The result_id a result payload appears to carry, read without parsing it, or None when it cannot be read
    that way (then only the parsed message says).

    The last `"result_id":"` in the payload: agents write result_id after the paths and labels (the model's field
    order), and inside a JSON string every quote is escaped, so neither a detail text nor a label holding these
    words comes after it. An id with an escape in it is left to the parser. What this returns is only a claim:
    it is used to drop a re-send cheaply, never to accept anything.
    """
    start = payload.rfind(_ID_KEY)
    if start < 0:
        return None
    start += len(_ID_KEY)
    end = payload.find(b'"', start, start + _ID_BYTES + 1)
    if end < 0:
        return None
    raw = payload[start:end]
    if b"\\" in raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def status_topic_agent(topic: str) -> str | None:
    """<agent> of wgprobe/v1/agents/<agent>/status, else None."""
    parts = topic.split("/")
    if len(parts) != len(_ROOT) + 3 or tuple(parts[: len(_ROOT)]) != _ROOT:
        return None
    kind, agent, leaf = parts[len(_ROOT) :]
    return agent if kind == "agents" and leaf == "status" and agent else None


def classify(payload: bytes | bytearray, error: ValidationError) -> tuple[Outcome, str]:
    """Why a payload that failed validation was refused, and one printable line saying where."""
    details = error.errors(include_url=False, include_input=False, include_context=False)
    if details and details[0]["type"] == "json_invalid":
        return Outcome.malformed, printable(f"not JSON: {details[0]['msg']}")
    version = _schema_version(payload)
    if version is not None and version != SCHEMA_VERSION:
        return Outcome.unknown_schema, printable(f"schema_version {version!r}; this aggregator speaks {SCHEMA_VERSION}")
    first = details[0] if details else None
    where = ".".join(str(part) for part in first["loc"]) if first else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    what = f"{where}: {first['msg']}" if first else str(error)
    return Outcome.malformed, printable(f"not a valid message: {what}{more}")


def _schema_version(payload: bytes | bytearray) -> Any:
    # Only on the refusal path: a message of another schema fails the v1 model on other fields first, and should be
    # counted as what it is rather than as garbage.
    try:
        data = pydantic_core.from_json(payload)
    except ValueError:
        return None
    return data.get("schema_version") if isinstance(data, dict) else None
