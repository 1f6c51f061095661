"""Build of the one compiled part: the native stepping loop (``envs/mjbatch.c``).

Everything else is in ``setup.cfg``. The extension is optional: where it cannot be compiled
(no C compiler), installation goes on and ``envs.native`` falls back to the Python loop.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "envs/mjbatch.c"
# The source's hash, compiled in: envs/native.py refuses a build of another version of the file.
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "envs._mjbatch",
            sources=[SOURCE],
            define_macros=[("MJBATCH_SOURCE_SHA256", f'"{DIGEST}"')],
            extra_compile_args=["-O3", "-std=c11", "-pthread", "-ffp-contract=off"],
            extra_link_args=["-pthread", "-lm"],
            optional=True,
        )
    ]
)
