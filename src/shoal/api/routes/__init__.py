"""REST routes, one module per resource. Routes only raise; ``shoal.api.errors`` maps."""
