"""Test-side name for the local sekmet harness (the demo uses the same code)."""

from connector.ehr_sandbox import SekmetServer, free_port, sekmet_executable

__all__ = ["SekmetServer", "free_port", "sekmet_executable"]
