"""Chamelaion bridge: owns every lip-sync job from two media inputs to a result file.

Kept import-light on purpose: the CLI's client-side commands import `bridge.client`,
`bridge.discovery` and `bridge.processes` from here without pulling in aiohttp or PyAV.
"""

__version__ = "0.1.0"
API_VERSION = 1  # of the local HTTP API (openapi.json's major); raised when clients would break
