"""Package layout that pyproject.toml cannot express: `migrations/` ships as `engine.migrations`.

The Alembic scripts live in the repository's top-level `migrations/` folder (where Alembic users
look for them) and are installed inside the package, so that the engine finds them at run time
from a wheel and from an editable install alike (`importlib.resources.files("engine.migrations")`).
"""

from setuptools import find_packages, setup

setup(
    package_dir={"": "src", "engine.migrations": "migrations"},
    packages=[*find_packages("src"), "engine.migrations", "engine.migrations.versions"],
)
