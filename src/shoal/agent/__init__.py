"""The node agent: one per machine. Runs sandboxes through :mod:`shoal.runtime`, serves
the node protocol (``/node/v1``) to the control plane, serves envd and sandbox ports to
the proxy, heartbeats, and on start adopts the sandboxes it left running."""
