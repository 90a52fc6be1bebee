"""Build the fast lane's native module in place: `python -m waypoint.fastlane.build`.

Before: `_lane.pyx` (Cython 3) beside this file, a C compiler and Python's headers. After:
`_lane.<abi>.so` next to it, rebuilt only when the source is newer than the module, so
`scripts/setup.sh` runs this every time at almost no cost. The generated `.c` and `.so` are
git-ignored; without them the waypoint runs its Python path (`waypoint.fastlane.native`).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_lane.pyx"


def target() -> Path:
    return HERE / f"_lane{sysconfig.get_config_var('EXT_SUFFIX')}"


def up_to_date() -> bool:
    so = target()
    return so.exists() and so.stat().st_mtime >= SOURCE.stat().st_mtime


def build(*, force: bool = False, quiet: bool = False) -> Path:
    so = target()
    if not force and up_to_date():
        return so
    from Cython.Build import cythonize
    from setuptools import Extension
    from setuptools.dist import Distribution

    ext = Extension("waypoint.fastlane._lane", [str(SOURCE)],
                    extra_compile_args=["-O2", "-Wno-unused-function"])
    modules = cythonize([ext], quiet=quiet, language_level=3, force=force,
                        build_dir=None)
    dist = Distribution({"ext_modules": modules})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = False
    cmd.build_lib = str(HERE / "build")
    cmd.build_temp = str(HERE / "build" / "tmp")
    cmd.ensure_finalized()
    cmd.run()
    built = next((HERE / "build").rglob(so.name))
    tmp = so.with_suffix(".tmp")
    tmp.write_bytes(built.read_bytes())
    tmp.replace(so)                      # atomic: a running waypoint keeps its mapping
    return so


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    force = "--force" in args
    if not force and up_to_date():
        print(f"fastlane: {target().name} is up to date")
        return 0
    so = build(force=force, quiet=True)
    print(f"fastlane: built {so.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
