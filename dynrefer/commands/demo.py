"""``dynrefer demo``: the built-in model on a generated scene and a bundled photo."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    """Add the ``demo`` sub-command to the ``dynrefer`` parser."""
    p = sub.add_parser("demo", help="describe regions of a generated scene and a bundled photo with the built-in "
                                    "model (needs the 'demo' extra)")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--model", default="builtin", help="'builtin' (default) or a model folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import format_table, run_demo

    summary = run_demo(Path(args.out), model=args.model)
    print(format_table(summary["regions"]))
    print(f"\nscene objects with the right category: {summary['scene']['category_correct']}")
    print(f"wrote {args.out}/: scene.json, scene_described.png, astronaut.json, astronaut_described.png, "
          "views.json, views_sheet.png, summary.json")
    return 0
