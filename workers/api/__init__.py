"""The query API, server-sent events and the dashboard (``pulse api``), over the trend store's read side."""
