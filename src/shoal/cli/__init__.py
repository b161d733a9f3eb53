"""The ``shoal`` command: run servers, and look at or kill sandboxes (thin over the REST API)."""
