"""Programs the tests need from the distribution, installed when a machine lacks them."""

import shutil
import subprocess

_INSTALL_TIMEOUT = 900


def ensure_command(command: str, *packages: str) -> str:
    """The path of `command`, after installing Debian's `packages` if it is missing (as
    root, like CI); fails the test with apt's output when that is not possible."""
    found = shutil.which(command)
    if found is not None:
        return found
    environment = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for arguments in (["update", "-qq"], ["install", "-y", "-qq", *packages]):
        done = subprocess.run(
            ["apt-get", *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"apt-get {' '.join(arguments)} failed: {done.stderr[-2000:]}")
    found = shutil.which(command)
    if found is None:
        raise RuntimeError(f"{command} is still missing after installing {' '.join(packages)}")
    return found
