"""Maps the repository layout onto one `daemoneye` package.

libs/daemoneye -> daemoneye, services/<name> -> daemoneye.services.<name>,
schemas/*.capnp -> daemoneye/schemas and deploy/rules -> daemoneye/default_rules (both
shipped in the wheel). Four optional C extensions, daemoneye._wirecheck (the frame
check), daemoneye._procread (the /proc record read and the netlink reader's datagram
loop), daemoneye._wirepack (the event writer) and daemoneye._wireread (the event
reader): where they cannot be built (no compiler) the install goes on and the Python
twin of each is used.
"""

from setuptools import Extension, find_packages, setup

library = find_packages("libs", include=["daemoneye", "daemoneye.*"])
services = ["daemoneye.services"] + [
    f"daemoneye.services.{name}" for name in find_packages("services")
]

setup(
    packages=[*library, *services, "daemoneye.schemas", "daemoneye.default_rules"],
    package_dir={
        "daemoneye": "libs/daemoneye",
        "daemoneye.services": "services",
        "daemoneye.schemas": "schemas",
        "daemoneye.default_rules": "deploy/rules",
    },
    package_data={"daemoneye.schemas": ["*.capnp"], "daemoneye.default_rules": ["*.yml", "*.md"]},
    ext_modules=[
        Extension(
            "daemoneye._wirecheck",
            ["libs/daemoneye/_wirecheck.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "daemoneye._procread",
            ["libs/daemoneye/_procread.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "daemoneye._wirepack",
            ["libs/daemoneye/_wirepack.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "daemoneye._wireread",
            ["libs/daemoneye/_wireread.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
    ],
)
