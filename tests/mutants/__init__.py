"""Deliberate breaks (mutants) of the invariants that matter most, and the script that checks each is caught."""
