"""Alert delivery (``pulse notify``): the alerts topic to webhooks, signed JSON or Slack."""
