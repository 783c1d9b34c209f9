"""What a running lab records about itself in DIR/lab-state.json: enough for `status`, `break`, `heal` and `down`
to act on exactly what `up` made, from another process and after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from probe.errors import LabError
from probe.lab import DEFAULT_IDENTITIES, DEFAULT_PREFIX
from probe.lab.faults import Fault
from probe.lab.topology import LabPlan, plan_lab

STATE_FILE = "lab-state.json"
STATE_VERSION = 1


class RelayState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wg_pid: int | None = None
    delay_pid: int | None = None
    faults: list[str] = Field(default_factory=list)

    def parsed_faults(self) -> list[Fault]:
        return [Fault.parse(text) for text in self.faults]


class LabState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    prefix: str = DEFAULT_PREFIX
    servers: int
    agents: int = 1
    identities: int = DEFAULT_IDENTITIES
    reflector_pid: int | None = None
    relays: dict[str, RelayState] = Field(default_factory=dict)

    def plan(self) -> LabPlan:
        return plan_lab(self.servers, self.agents, self.identities, self.prefix)


def state_path(lab_dir: Path) -> Path:
    return lab_dir / STATE_FILE


def load_state(lab_dir: Path) -> LabState:
    path = state_path(lab_dir)
    try:
        return LabState.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab in {lab_dir} (no {STATE_FILE}); start one with `probe lab up`") from None
    except (OSError, UnicodeDecodeError, ValidationError, json.JSONDecodeError) as exc:
        raise LabError(f"unreadable lab state {path}: {exc}") from exc


def save_state(lab_dir: Path, state: LabState) -> None:
    # Write-then-rename so a concurrent `status` never reads half a file.
    path = state_path(lab_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
