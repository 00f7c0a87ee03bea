#!/usr/bin/env python3
"""Make sure Ray's auth token file exists and only its owner can read it (0600).

Ray 2.60 reads its cluster token from ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` and, when it has to
create one (``ray start``, ``serve run``), writes it with the process umask: usually 0644, readable by every
local user, who could then submit jobs to the cluster. Run before the cluster starts (scripts/run.sh does):
a missing token is created 0600 with the same generator Ray uses (256 random bits, hex); an existing one is
chmod 0600 and left as it is. ``$RAY_AUTH_TOKEN`` set in the environment means no file is needed: nothing to do.

    python scripts/ray_token.py [--path FILE]      # prints the path, never the token
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
import sys
from pathlib import Path

__all__ = ["token_path", "ensure_private_token"]


def token_path() -> Path:
    """Where Ray looks for its token file."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_private_token(path: Path) -> str:
    """Create ``path`` 0600 with a fresh token if missing, else chmod it 0600; return what was done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            return f"{path}: mode {mode:04o} -> 0600"
        return f"{path}: already 0600"
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return f"{path}: created (0600)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="token file (default $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    args = parser.parse_args(argv)
    if args.path is None and os.environ.get("RAY_AUTH_TOKEN"):
        print("ray_token: $RAY_AUTH_TOKEN is set; no token file needed", file=sys.stderr)
        return 0
    try:
        print(f"ray_token: {ensure_private_token(args.path or token_path())}", file=sys.stderr)
    except OSError as exc:
        print(f"ray_token: cannot secure {args.path or token_path()}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
