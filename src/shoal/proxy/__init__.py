"""The data-plane proxy: one address (``E2B_SANDBOX_URL``) for every sandbox.

Routes by ``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port`` (or a ``<port>-<id>.<domain>`` Host)
to the node agent that runs the sandbox, streaming both ways without buffering.
"""
