"""Package discovery for the wheel (the rest of the metadata is in pyproject.toml).

One import name, ``uvc``: the repository keeps ``export/`` and ``bench/`` at the top, and the wheel
maps them to ``uvc.export`` and ``uvc.bench``. Every package under the three folders is found
here, so a new subpackage cannot be left out of the wheel (a hand-written list once missed
``uvc.methods``).
"""

from setuptools import find_packages, setup

# folder in the repository -> the import name it installs as
ROOTS = {"uvc": "uvc", "export": "uvc.export", "bench": "uvc.bench"}


def _packages() -> list[str]:
    found = []
    for folder, name in ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return found


setup(packages=_packages(), package_dir={name: folder for folder, name in ROOTS.items()})
