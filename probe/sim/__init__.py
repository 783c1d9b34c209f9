"""A simulated fleet of WireGuard relays on loopback, without root: real handshakes and transport crypto (the
sans-I/O `Responder`), a simulated inside (in-tunnel gateway, NAT, forward target, reflector) and the lab's faults
plus a hostile relay's lies, changed live.

    probe.sim.fleet.SimFleet          many relays + a real reflector on the running event loop (`async with`)
    probe.sim.relay.SimRelay          one relay on its own, for tests that script it (`behaviour=`)
    probe.sim.conversation            a client key on a relay: the API a behaviour answers with, the counters
    probe.sim.faults                  fault kinds: SimFault.parse("loss:20")
    probe.sim.world                   what the inside of a relay answers (sans-I/O)
    probe.sim.testing.agent_fleet     a started fleet with agent keys and configs written, for tests
    probe.sim.serve, control, cli     `probe sim up | break | heal | status`

This package imports nothing on its own (`probe` builds its parser with `probe.sim.cli`, which must stay light):
`probe sim` commands and tests import the module they use.
"""

# Keys per agent the relays accept, as in the lab: a dual-stack relay's 12 paths then take two handshakes per key.
DEFAULT_IDENTITIES = 6
