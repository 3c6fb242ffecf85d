"""Test helpers shipped with the package: the fake SendGrid API."""
