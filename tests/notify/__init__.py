"""Notifier tests against real local peers: aiohttp receivers and an aiosmtpd server."""
