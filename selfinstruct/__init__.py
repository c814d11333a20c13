"""The `selfinstruct` console script and what every package shares (user-facing errors)."""
