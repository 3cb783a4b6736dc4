"""Persistence behind typing.Protocol interfaces (api.py); memory.py is the transient implementation."""
