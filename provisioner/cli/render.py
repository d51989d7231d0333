"""`provision render`: the files a profile installs, written into a folder with their modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner.cli._common import EXIT_OK, command
from provisioner.cli._output import Result, Table, lines


@command("render")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write the tree into (as if it were /).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
@click.option("--node", default=None, metavar="NAME",
              help="A cluster profile: render this node's files (default: the head's).")
def render(profile: Path, out_dir: Path, overwrite: bool, node: str | None, as_json: bool) -> Result:
    """Write the files PROFILE would install into OUT, byte for byte, with modes.

    Nothing else is touched. Owners are listed (and kept in JSON), not set.

    \b
    Example:
      provision render examples/quickstart.yaml --out ./rendered
      provision render examples/quickstart.yaml --out ./rendered --overwrite --json
      provision render examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml --node w1 --out ./w1
    """
    from provisioner.render.pipeline import build, for_node, write_tree  # heavy: only when run

    built = build(profile, model_root="", network=False)
    if node is not None:
        built = for_node(built, node)
    written = write_tree(built.rendered, out_dir, overwrite=overwrite)
    files: list[dict[str, Any]] = [
        {"path": f.path, "mode": f.mode_text, "owner": f"{f.owner}:{f.group}",
         "bytes": len(f.content), "notify": list(f.notify)} for f in built.rendered.files]
    table = Table(f"{len(written)} files rendered into {out_dir}", ["path", "mode", "owner", "bytes"],
                  [[f["path"], f["mode"], f["owner"], str(f["bytes"])] for f in files])
    warnings = lines(*(f"warning: {w}" for w in built.rendered.warnings))
    return Result(EXIT_OK, {"out": str(out_dir), "files": files, "warnings": list(built.rendered.warnings)},
                  (table, warnings))
