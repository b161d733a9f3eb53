"""Small internal httpx clients: the node protocol client lives in ``shoal.client.node``."""
