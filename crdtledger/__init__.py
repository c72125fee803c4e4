"""crdtledger: a masterless peer-to-peer member and stored-value ledger.

`__version__` is the one place the release number is written: pyproject.toml reads
it (a dynamic version), `crdtledger --version` and the node's `/health` print it, and
a node tells it to its peers in its first hello (crdtledger.sync), so a refusal
between two releases can name both. CHANGELOG.md says what each release changed.
"""

__version__ = "0.3.0.dev0"
