"""Generate the Python gRPC stubs for every .proto under ``protos/``.

The one code-generation entry point of the project (``python -m protos.codegen``,
run by ``make proto`` and by ``make install``). Stubs are written next to their
``.proto`` files so that they import as ``protos.marketing.v1.<name>_pb2`` from the
installed package, which is what Ray Serve's proxy process needs to import.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
# protoc writes absolute imports rooted at the include path ("from marketing.v1 import x_pb2");
# the stubs live inside the ``protos`` package, so those imports are re-rooted there.
# The message classes' ``__module__`` is rooted there too, which breaks pickling them
# (Ray Serve pickles requests between the proxy and the replicas).
_IMPORT_RE = re.compile(r"^from (marketing(?:\.\w+)*) import ", re.MULTILINE)
_MODULE_NAME_RE = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(marketing\.)")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Return every .proto file below ``root``, sorted for a stable build."""
    return sorted(root.rglob("*.proto"))


def generate(root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every .proto under ``root`` into ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``.

    Returns:
        The generated files.

    Raises:
        RuntimeError: protoc reported an error (its message is included).
    """
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    protos = proto_files(root)
    if not protos:
        raise RuntimeError(f"no .proto files under {root}")
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *[str(p.relative_to(root)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {', '.join(str(p) for p in protos)}")
    generated: list[Path] = []
    for proto in protos:
        stem = proto.with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            out = stem.parent / (stem.name + suffix)
            text = out.read_text(encoding="utf-8")
            fixed = _IMPORT_RE.sub(r"from protos.\1 import ", text)
            fixed = _MODULE_NAME_RE.sub(r"\1protos.\2", fixed)
            if fixed != text:
                out.write_text(fixed, encoding="utf-8")
            generated.append(out)
        # Every folder on the way must be a package for the stubs to import.
        for folder in [proto.parent, *proto.parent.parents]:
            if folder == root.parent or root not in [folder, *folder.parents]:
                break
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated protobuf package."""\n', encoding="utf-8")
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protos.codegen",
        description="Generate Python gRPC stubs for every .proto under protos/ (in place).",
    )
    parser.parse_args(argv)
    try:
        files = generate()
    except RuntimeError as exc:
        print(f"codegen: {exc}", file=sys.stderr)
        return 1
    print(f"codegen: wrote {len(files)} files under {PROTO_ROOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
