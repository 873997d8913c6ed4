"""Chamelaion bridge: owns every lip-sync job from two media inputs to a result file.

Kept import-light on purpose: the Blender add-on imports `bridge.client` and
`bridge.discovery` from here without pulling in aiohttp or PyAV.
"""

__version__ = "0.1.0"
API_VERSION = 1  # of the local HTTP API; raised when a change would break its clients
