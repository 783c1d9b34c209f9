"""The long-running probe agent (scheduler, inventory refresh, MQTT publisher); built on the `probe` library."""
