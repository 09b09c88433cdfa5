"""Build step of the package: the replication link's gRPC stubs, generated from its .proto.

The stubs (`*_pb2.py`, `*_pb2_grpc.py`, `*_pb2.pyi`) are never committed: `build_proto`
is a sub-command of `build`, so it runs for `pip install .` and `pip wheel .` (into the
build directory, so the wheel ships them) and for `pip install -e .` (in place, next to
the .proto: setuptools sets `editable_mode` on every build sub-command). A .proto that
does not compile fails the install loudly.

protoc runs with the project root as its include path, so the generated code imports
`from resilience.replication import replica_link_pb2` and registers the file under its
full path (no clash with the etcd client's own protos in one process).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).parent.resolve()
PROTOS = ["resilience/replication/replica_link.proto"]
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


class build_proto(Command):  # noqa: N801 - setuptools names commands in lower case
    description = "generate the gRPC stubs of the package's .proto files with grpcio-tools"
    user_options = [("force", "f", "regenerate even when up to date")]
    boolean_options = ["force"]

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False
        self.force = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self) -> None:
        import importlib.resources

        from grpc_tools import protoc  # a build-time dependency (pyproject: build-system)

        well_known = str(importlib.resources.files("grpc_tools") / "_proto")
        out = ROOT if self.editable_mode or self.build_lib is None else Path(self.build_lib)
        out.mkdir(parents=True, exist_ok=True)
        for rel in PROTOS:
            source = ROOT / rel
            targets = [out / (rel.removesuffix(".proto") + s) for s in SUFFIXES]
            if not self.force and all(
                t.exists() and t.stat().st_mtime >= source.stat().st_mtime for t in targets
            ):
                continue
            args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out}",
                    f"--pyi_out={out}", f"--grpc_python_out={out}", rel]
            cwd = os.getcwd()
            os.chdir(ROOT)
            try:
                code = protoc.main(args)
            finally:
                os.chdir(cwd)
            if code != 0:
                raise RuntimeError(f"protoc failed (exit {code}) on {rel}")

    # setuptools' SubCommand protocol
    def get_source_files(self) -> list[str]:
        return list(PROTOS)

    def get_outputs(self) -> list[str]:
        base = self.build_lib or "build/lib"
        return [os.path.join(base, p.removesuffix(".proto") + s) for p in PROTOS for s in SUFFIXES]

    def get_output_mapping(self) -> dict[str, str]:
        return {}


# Before build_py, which collects the package's .py files when it runs.
build.sub_commands.insert(0, ("build_proto", None))

setup(cmdclass={"build_proto": build_proto})
