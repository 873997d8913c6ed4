"""Chamelaion bridge: owns every lip-sync job from two media inputs to a result file.

Kept import-light on purpose: the CLI's client-side commands import `bridge.discovery` and
`bridge.processes` (and the client package, `chamelaion_client`) from here without pulling in
aiohttp or PyAV.
"""

# The local HTTP API's version is the contract's, which the client package holds: the server
# reports these attributes, so a test can serve another version by changing them.
from chamelaion_client import API_REVISION as API_REVISION
from chamelaion_client import API_VERSION as API_VERSION

__version__ = "0.1.0"
