"""`make gpu-kit`: the wheels that `make bench-gpu` needs on a lent GPU machine and its image lacks, into .whl/.

The lent machine (the `device` tool) reaches no package registry. Its image has torch (CUDA), triton, numpy,
pandas, pyarrow, jinja2 and much else, but not SQLAlchemy, alembic, pydantic-settings, datasets, bitsandbytes or
liger-kernel, and older transformers, peft and huggingface_hub than tunedeck is tested with. This downloads those,
at the versions installed in this venv (so the GPU runs what CI tests), as CPython 3.12 manylinux wheels (the
image's Python), and slims bitsandbytes to its CPU and CUDA 13 libraries (the image's torch is built for CUDA 13;
the whole wheel is 43 MB of mostly other CUDA versions' libraries, and a device call carries 64 MiB at most).
Then, on the device, `bash bench/gpu_device.sh` installs them into /tmp/site and runs the bench:

    make gpu-kit                          # here, once: .whl/ (git-ignored), about 30 MB
    # device tool: run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=570)
    python -m bench.gpu_train --record <files_at>/gpu-train.json --write   # here: the table into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What bench.gpu_train imports that the image lacks (read from an import trace of `--smoke`), and what it has
#: at another version than tunedeck is tested with. Versions: this venv's.
KIT = (
    "accelerate",
    "alembic",
    "annotated-types",
    "bitsandbytes",
    "datasets",
    "dill",
    "httpcore2",
    "httpx2",
    "huggingface_hub",
    "Mako",
    "multiprocess",
    "opentelemetry-api",
    "peft",
    "pydantic",
    "pydantic_core",
    "pydantic-settings",
    "python-dotenv",
    "redis",
    "SQLAlchemy",
    "tokenizers",
    "transformers",
    "truststore",
    "typing-inspection",
)
#: Installed on GPU workers only (the `gpu` extra), so not in this venv: a version that supports transformers 5.
GPU_ONLY = ("liger-kernel==0.8.5",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64")
#: bitsandbytes' native libraries to keep: the CPU one and CUDA 13's (libbitsandbytes_cuda130.so, _cuda132.so)
KEEP_NATIVE = ("libbitsandbytes_cpu", "libbitsandbytes_cuda13")
LIMIT_BYTES = 48 * 2**20  # the device carries 64 MiB with the working tree


def requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in KIT] + list(GPU_ONLY)


def download(target: Path, wanted: list[str], python_version: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(target),
        *wanted,
    ]
    subprocess.run(command, check=True)


def slim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the native libraries of other CUDA versions, ROCm and XPU (RECORD too)."""

    def dropped(name: str) -> bool:
        leaf = name.rsplit("/", 1)[-1]
        return leaf.startswith("libbitsandbytes_") and not leaf.startswith(KEEP_NATIVE)

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not dropped(line.split(",", 1)[0])) + "\n").encode()
            out.writestr(item, data)
    slim.replace(wheel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--python-version", default="3.12", help="the device image's (3.12); 3.11 for a dry run here")
    args = parser.parse_args(argv)
    args.dest.mkdir(exist_ok=True)
    for old in args.dest.glob("*.whl"):
        old.unlink()
    wanted = requirements()
    download(args.dest, wanted, args.python_version)
    for wheel in args.dest.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:6.1f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")
    if len(wheels) != len(wanted):
        print(f"expected {len(wanted)} wheels", file=sys.stderr)
        return 1
    if total > LIMIT_BYTES:
        print(f"over {LIMIT_BYTES / 2**20:.0f} MiB: a device call could not carry it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
