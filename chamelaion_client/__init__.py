"""The one client of the bridge's local HTTP API, for the CLI and the Blender add-on alike.

It knows only the contract (bridge/openapi.json) and the data folder's layout, never the
bridge's code: it imports nothing from `bridge`, so the add-on can use it while it speaks to a
bridge of any release. Standard library only.

- `layout`: where a bridge for a data folder is found (the folder, bridge.json, the token,
  the loopback names).
- `proofs`: the token-keyed HMACs by which a bridge proves itself and shows its API key.
- `client`: `BridgeClient`, the routes, and errors whose text is a sentence.
"""

API_VERSION = 1  # of the local HTTP API (openapi.json's major); raised when clients would break
