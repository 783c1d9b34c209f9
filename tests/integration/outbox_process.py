"""A stand-in agent process for the outbox tests: `python -m tests.integration.outbox_process CONFIG.json`.

Puts its status online and `count` results (one every `interval` seconds, result ids `<agent>-<n>`) into an
MqttOutbox and runs it until SIGTERM, which cancels it the way the agent's task tree does; exits 0 then. Prints
`put N` after each result and `done` when all are put, so the test knows where it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.outbox import MqttOutbox
from agents.spool import Spool
from probe.aggregator.testing import make_result
from probe.messages import AgentStatus
from probe.service_config import MqttSection, load_mqtt_secrets


def _log(level: int, event: str, **fields: object) -> None:
    print("log", level, event, json.dumps(fields, default=str), file=sys.stderr, flush=True)


async def main(config: dict[str, Any]) -> None:
    mqtt = MqttSection.model_validate(config["mqtt"])
    load_mqtt_secrets(mqtt)
    agent = str(config["agent"])
    servers = list(config["servers"])
    count, interval = int(config["count"]), float(config["interval"])
    spool = Spool(Path(str(config["spool"])), max_bytes=1 << 26, max_age_seconds=86400, now=time.time)
    outbox = MqttOutbox(mqtt, agent, spool, log=_log, flush_seconds=float(config.get("flush_seconds", 5.0)))
    started = datetime.now(UTC)
    outbox.put_status(AgentStatus(agent=agent, online=True, started_at=started, updated_at=started))
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)

    async def produce() -> None:
        for n in range(count):
            server = servers[n % len(servers)]
            outbox.put_result(make_result(server, agent, taken_at=time.time(), round=n, result_id=f"{agent}-{n}"))
            print("put", n, flush=True)
            await asyncio.sleep(interval)
        print("done", flush=True)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(outbox.run())
            group.create_task(produce())
    finally:
        spool.close()


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM: the outbox has flushed and said goodbye
        asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
    print("exit", flush=True)
