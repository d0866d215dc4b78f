"""promtool and amtool for the controller, from Debian's own packages, without installing them.

    python scripts/promtool.py              prints the directory that holds promtool and amtool
    python scripts/promtool.py test rules roles/monitoring/files/rules/clusterkit.rules.test.yml

The tools come from the packages the monitoring hosts run (prometheus, prometheus-alertmanager):
`apt-get download` fetches them into .cache/promtool/ and `dpkg-deb -x` unpacks them there, so
nothing is installed or started on the controller (any Debian or Ubuntu machine with apt; the
binaries need only libc). A promtool already on PATH is used as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "promtool"
PACKAGES = ("prometheus", "prometheus-alertmanager")


def tools_dir() -> Path:
    """A directory with promtool and amtool (downloaded and unpacked on first use)."""
    on_path = shutil.which("promtool")
    if on_path and shutil.which("amtool"):
        return Path(on_path).parent
    bin_dir = CACHE / "root" / "usr" / "bin"
    if (bin_dir / "promtool").exists() and (bin_dir / "amtool").exists():
        return bin_dir
    CACHE.mkdir(parents=True, exist_ok=True)
    download = CACHE / "debs"
    download.mkdir(exist_ok=True)
    for package in PACKAGES:
        if not list(download.glob(f"{package}_*.deb")):
            run = subprocess.run(
                ["apt-get", "download", package], cwd=download, capture_output=True, text=True
            )
            if run.returncode != 0 and os.geteuid() == 0:
                # Lists not fetched yet on a fresh machine (as app/scripts/test-deps.sh does).
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
                run = subprocess.run(
                    ["apt-get", "download", package], cwd=download, capture_output=True, text=True
                )
            if run.returncode != 0:
                sys.exit(
                    f"cannot fetch {package} with apt-get download ({run.stderr.strip()}): "
                    "install Debian's prometheus and prometheus-alertmanager, or put promtool and "
                    "amtool on PATH"
                )
    staging = CACHE / f"root.{os.getpid()}"
    for deb in sorted(download.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
    try:
        staging.rename(CACHE / "root")
    except OSError:  # another process unpacked them first
        shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def main() -> int:
    directory = tools_dir()
    if len(sys.argv) == 1:
        print(directory)
        return 0
    return subprocess.run([str(directory / "promtool"), *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
