"""Maps the repository's top-level folders onto the one `medge` package.

pyproject.toml holds the metadata; this file only exists because the package layout
(`edge/` -> `medge.edge`, ...) is computed, so new subpackages need no edit here.
"""
from setuptools import find_packages, setup

ROOTS = {
    "medge": "cli",
    "medge.data": "data",
    "medge.edge": "edge",
    "medge.train": "train",
    "medge.convert": "convert",
    "medge.dashboard": "dashboard",
    "medge.fleet": "fleet",
}

packages, package_dir = [], {}
for package, folder in ROOTS.items():
    package_dir[package] = folder
    packages.append(package)
    for sub in find_packages(folder):
        packages.append(f"{package}.{sub}")
        package_dir[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "": ["*.json", "*.npz", "*.jpeg", "*.png", "*.html", "*.js", "*.css", "*.md", "*.toml", "*.csv",
             "static/*", "templates/*"],
        "medge.data": ["chest_xray_samples/*/*.jpeg"],
    },
    include_package_data=False,
)
