"""Copy the Serve config (cluster/serve/conductor.yaml) verbatim into the RayService's
`serveConfigV2` block, so `serve deploy` and KubeRay deploy the same app.

    python cluster/kuberay/sync_rayservice.py          # rewrite rayservice.yaml in place
    python cluster/kuberay/sync_rayservice.py --check  # exit 1 if the two differ

Only the block's lines change; the manifest's comments and the rest stay as written.
tests/test_cluster_kuberay.py fails while the two differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "cluster" / "serve" / "conductor.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice" / "rayservice.yaml"
KEY = "serveConfigV2: |"


def _block(lines: list[str]) -> tuple[int, int, int]:
    """(index of the `serveConfigV2: |` line, end of its block, the key's indent)."""
    starts = [i for i, line in enumerate(lines) if line.strip() == KEY]
    if len(starts) != 1:
        raise SystemExit(f"{RAYSERVICE}: expected one `{KEY}` line, found {len(starts)}")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # trailing blank lines stay outside
        end -= 1
    return start, end, indent


def embedded(manifest: str, serve_config: str) -> str:
    """`manifest` with its serveConfigV2 block replaced by `serve_config`, indented."""
    lines = manifest.splitlines(keepends=True)
    start, end, indent = _block(lines)
    pad = " " * (indent + 2)
    body = [pad + line if line.strip() else "\n"
            for line in serve_config.rstrip("\n").splitlines(keepends=False)]
    return "".join(lines[: start + 1] + [b if b == "\n" else b + "\n" for b in body]
                   + lines[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report whether they differ")
    args = ap.parse_args(argv)
    if not SERVE_CONFIG.is_file():
        print(f"{SERVE_CONFIG} does not exist: the Serve config is written there first",
              file=sys.stderr)
        return 2
    current = RAYSERVICE.read_text()
    want = embedded(current, SERVE_CONFIG.read_text())
    if want == current:
        return 0
    if args.check:
        print(f"{RAYSERVICE.name}: serveConfigV2 differs from {SERVE_CONFIG.name}; run "
              f"python cluster/kuberay/sync_rayservice.py", file=sys.stderr)
        return 1
    RAYSERVICE.write_text(want)
    print(f"{RAYSERVICE}: serveConfigV2 = {SERVE_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
