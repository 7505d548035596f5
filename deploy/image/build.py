"""Build the serving image (the top-level Containerfile) from a wheelhouse made here, so the image build is offline.

    python deploy/image/build.py [--tag IMAGE] [--base-image IMAGE] [--model-dir DIR] [--python 3.11] [--context-only]

(`make image`, `make wheelhouse`). Steps, each timed:
1. the kit's wheel, built from its sdist (what a release ships), with the dev venv's setuptools;
2. the wheelhouse: the plain install's third-party wheels for the image's Python and platform (`pip download
   --only-binary`), cached under ~/.cache/serving-kit-image keyed by a hash of the wheel's requirements, the Python
   version and the platform tags;
3. the base: `--base-image` as given, else a local Debian 12 image (python3, python3-venv, libstdc++6, passwd; no
   Perl, no docs) made by mmdebstrap from deb.debian.org and `podman import`ed, for hosts that reach no container
   registry; its tarball is cached the same way, keyed by the package list and mirrors;
4. the build context, build/image/ in the checkout (wheelhouse/deps, wheelhouse/kit, models/<Name> with
   --model-dir), and `podman build --network=none` on it.
The cache folder is $SERVING_KIT_IMAGE_CACHE if set; delete it to pick up newer wheels and Debian updates.
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ROOT / "build" / "image"
CACHE = Path(os.environ.get("SERVING_KIT_IMAGE_CACHE", Path.home() / ".cache" / "serving-kit-image"))
DEFAULT_TAG = "localhost/pipeline-serving-kit:0.1.0"
BASE_REPOSITORY = "localhost/serving-kit-base"
INSTALL_TAG = "localhost/pipeline-serving-kit-build:install"
LABEL = "org.opencontainers.image.title=pipeline-serving-kit"
# The local base: Debian 12 (its python3 is 3.11), what the plain install needs at run time (onnxruntime and OpenCV
# link libstdc++), venv to install, passwd for useradd; without docs, man pages and translations (copyrights stay).
DEBIAN = {
    "suite": "bookworm",
    "variant": "essential",
    # usr-is-merged, on a /usr merged by mmdebstrap's hook, rather than the usrmerge tool, which brings Perl
    "packages": ["python3", "python3-venv", "libstdc++6", "passwd", "usr-is-merged"],
    "hooks": ["/usr/share/mmdebstrap/hooks/merged-usr"],
    "apt": ['APT::Install-Recommends "false"'],
    "mirrors": ["deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main"],
    "dpkg": ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
             "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/locale/*"],
}
DEBIAN_PYTHON = "3.11"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# glibc of Debian 12 and of python:3.11-slim-bookworm: manylinux wheels for it and every older glibc
GLIBC_MINOR = 36


def podman_command() -> list[str]:
    """$PODMAN if set, else podman on runc when installed: Debian 12's crun 1.8 refuses hybrid cgroup hosts.

    ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2": v1 controllers beside a v2 hierarchy
    that holds one, as on this project's VMs; runc runs there.)
    """
    if os.environ.get("PODMAN"):
        return shlex.split(os.environ["PODMAN"])
    return ["podman", "--runtime", "runc"] if shutil.which("runc") else ["podman"]


def digest(data: object) -> str:
    """A short stable hash of JSON-able inputs: the cache key of what they produce."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """A command whose failure ends the build with its output (stderr) shown."""
    done = subprocess.run(args, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"error: {shlex.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-5000:]}")
    return done


def build_wheel(out: Path) -> Path:
    """The kit's wheel, built from its sdist so that it holds only what a release holds.

    With a fixed SOURCE_DATE_EPOCH the same sources give the same bytes, so podman reuses its cached layers.
    """
    hook = "import sys; from setuptools import build_meta; print(getattr(build_meta, sys.argv[1])(sys.argv[2]))"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}  # 1980-01-01, the earliest time a zip entry can hold
    sdist = out / run([sys.executable, "-c", hook, "build_sdist", str(out)], cwd=ROOT, env=env).stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "unpacked", filter="data")
    source = out / "unpacked" / sdist.name.removesuffix(".tar.gz")
    return out / run([sys.executable, "-c", hook, "build_wheel", str(out)], cwd=source, env=env).stdout.split()[-1]


def requirements(wheel: Path) -> list[str]:
    """The plain install's requirements, from the wheel's metadata (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(item for item in archive.namelist() if item.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    return sorted(line.split(": ", 1)[1] for line in lines
                  if line.startswith("Requires-Dist: ") and "extra ==" not in line)


def wheelhouse(wheel: Path, python: str) -> Path:
    """The plain install's third-party wheels for `python` on this machine's architecture, cached by their inputs."""
    machine = platform.machine()
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 4, -1)]
    platforms += [f"{legacy}_{machine}" for legacy in ("manylinux2014", "manylinux2010", "manylinux1")]
    folder = CACHE / f"wheelhouse-{digest([requirements(wheel), python, platforms])}"
    if folder.is_dir():
        return folder
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir=CACHE) as scratch:  # renamed into place when complete
        partial = Path(scratch) / "wheels"
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
             "--python-version", python, "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}",
             *[arg for tag in platforms for arg in ("--platform", tag)], "--dest", str(partial), str(wheel)])
        (partial / wheel.name).unlink()
        partial.rename(folder)
    return folder


def image_exists(podman: list[str], name: str) -> bool:
    """Whether podman's storage holds an image by that name."""
    return subprocess.run([*podman, "image", "exists", name], capture_output=True).returncode == 0


def debian_base(podman: list[str]) -> str:
    """The local Debian base image, built with mmdebstrap and imported once per recipe; its name."""
    key = digest(DEBIAN)
    name = f"{BASE_REPOSITORY}:{key}"
    if image_exists(podman, name):
        return name
    tarball = CACHE / f"debian-base-{key}.tar"
    if not tarball.is_file():
        if not shutil.which("mmdebstrap"):
            sys.exit("error: no base image: pass --base-image, or install mmdebstrap (apt-get install mmdebstrap) to "
                     "build a local Debian one")
        partial = tarball.with_suffix(".partial.tar")
        run(["mmdebstrap", "--quiet", f"--variant={DEBIAN['variant']}", "--include=" + ",".join(DEBIAN["packages"]),
             *[f"--hook-dir={hook}" for hook in DEBIAN["hooks"]], *[f"--aptopt={option}" for option in DEBIAN["apt"]],
             *[f"--dpkgopt={option}" for option in DEBIAN["dpkg"]], DEBIAN["suite"], str(partial), *DEBIAN["mirrors"]])
        partial.rename(tarball)
    run([*podman, "import", "--quiet", "--change", f"ENV PATH={SYSTEM_PATH}", "--change", 'CMD ["python3"]',
         str(tarball), name])
    return name


def link_or_copy(source: str, target: str) -> None:
    """A hard link (the cached wheels are large and never modified in place), or a copy across filesystems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_context(wheel: Path, deps: Path, model_dir: Path | None) -> str | None:
    """build/image/: wheelhouse/deps, wheelhouse/kit and the model to bake in; the model's path inside it."""
    shutil.rmtree(CONTEXT, ignore_errors=True)
    shutil.copytree(deps, CONTEXT / "wheelhouse" / "deps", copy_function=link_or_copy)
    (CONTEXT / "wheelhouse" / "kit").mkdir()
    shutil.copy2(wheel, CONTEXT / "wheelhouse" / "kit")
    if model_dir is None:
        return None
    if not (model_dir / "serving_server").is_dir():
        sys.exit(f"error: {model_dir} is not an exported model folder (no serving_server/ in it)")
    shutil.copytree(model_dir, CONTEXT / "models" / model_dir.resolve().name)
    return f"models/{model_dir.resolve().name}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The image's name, base, Python, model; or only the context."""
    parser = argparse.ArgumentParser(description="Build the pipeline-serving-kit container image (Containerfile).")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image's name (default {DEFAULT_TAG})")
    parser.add_argument("--base-image", help="BASE_IMAGE, e.g. docker.io/library/python:3.11-slim-bookworm (default: "
                                             "a local Debian 12 base made with mmdebstrap)")
    parser.add_argument("--python", default=DEBIAN_PYTHON,
                        help=f"the base image's Python, X.Y (default {DEBIAN_PYTHON}, Debian 12's)")
    parser.add_argument("--model-dir", type=Path, help="an exported model folder to bake in at /srv/serving/models/"
                                                       "<its name> (default: none, mount one at run time)")
    parser.add_argument("--context-only", action="store_true",
                        help=f"stop after writing the build context ({CONTEXT.relative_to(ROOT)}) and print the "
                             "podman build command")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Wheel, wheelhouse, base, context, image; prints each step's time and the image's size."""
    args = parse_args(argv)
    podman = podman_command()
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as scratch:
        wheel = build_wheel(Path(scratch))
        times["wheel"] = time.monotonic() - started
        deps = wheelhouse(wheel, args.python)
        times["wheelhouse"] = time.monotonic() - started - sum(times.values())
        model = make_context(wheel, deps, args.model_dir)
    build_args = {"PYTHON_VERSION": args.python, "MODEL_DIR": model or ""}
    if args.context_only:
        flags = " ".join(f"--build-arg {key}={value}" for key, value in build_args.items())
        print(f"build context: {CONTEXT}\npodman build --format docker --network=none {flags} "
              f"[--build-arg BASE_IMAGE=...] -f {ROOT / 'Containerfile'} -t {args.tag} {CONTEXT}")
        return 0
    build_args["BASE_IMAGE"] = args.base_image or debian_base(podman)
    times["base"] = time.monotonic() - started - sum(times.values())
    podman_build = [*podman, "build", "--format", "docker", "--network=none", "--layers", "--pull=missing",
                    *[arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")],
                    "--file", str(ROOT / "Containerfile")]
    # the install stage first, under a name: that keeps its layers (the cache of the next build) from being pruned
    for target in (["--target", "install", "--tag", INSTALL_TAG], ["--tag", args.tag]):
        if subprocess.run([*podman_build, *target, str(CONTEXT)]).returncode != 0:
            sys.exit("error: podman build failed")
    # what the previous build left unnamed (its stages and image), by the label on this Containerfile's layers
    run([*podman, "image", "prune", "--force", "--filter", f"label={LABEL}"])
    times["podman build"] = time.monotonic() - started - sum(times.values())
    image_id, size = run([*podman, "image", "inspect", "--format", "{{.Id}} {{.Size}}", args.tag]).stdout.split()
    print(f"image {args.tag} ({image_id[:12]}): {int(size) / 1e6:.0f} MB, base {build_args['BASE_IMAGE']}, "
          f"Python {args.python}, model {model or 'none (mount one)'}")
    print("built in " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in times.items())
          + f"; total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
