"""The software a bundle was written with (the manifest's `environment`): a trained model's
quality moved between two installs with the same torch and transformers, and the versions of the
other libraries had not been recorded, so the difference could not be traced.

Read from the installed packages' metadata (importlib.metadata), without importing them; a
package that is not installed, or whose metadata cannot be read, is left out: recording it never
stops a bundle from being written.
"""

from __future__ import annotations

import platform
from importlib import metadata

# The distributions whose versions can change what training computes or what a bundle holds.
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "marisa-trie", "genrec")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{distribution name: version} of those of `names` that are installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except Exception:  # not installed, or broken metadata: nothing to record
            continue
    return versions


def environment() -> dict:
    """Python's version, the platform and the packages' versions, as the manifest records them."""
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": package_versions()}
