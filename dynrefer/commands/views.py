"""``dynrefer views IMAGE --box X1 Y1 X2 Y2 [...]``: the views of regions (SPEC §1.1) as JSON, optionally a
contact sheet."""

from __future__ import annotations

import json

from ..errors import UsageError


def register(sub) -> None:
    """Add the ``views`` sub-command to the ``dynrefer`` parser."""
    p = sub.add_parser(
        "views",
        help="choose and show the multi-resolution views of regions of an image",
        description="Compute the views of each region (SPEC §1.1): geometry, pHash, the ten candidates "
        "with their greedy scores, and optionally a contact sheet PNG.",
    )
    p.add_argument("image", help="image file")
    p.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X1", "Y1", "X2", "Y2"),
        required=True,
        help="a region box in pixels (repeat for several regions); see --box-format",
    )
    p.add_argument("--box-format", choices=["xyxy", "xywh"], default="xyxy")
    p.add_argument("--num-views", type=int, default=None, help="views per region including t = 0 (default 3)")
    p.add_argument(
        "--policy",
        choices=["greedy", "greedy_unique", "random", "fixed"],
        default=None,
        help="view selection policy (default greedy, or fixed when --t is given)",
    )
    p.add_argument(
        "--t",
        type=float,
        nargs="+",
        default=None,
        metavar="T",
        help="the extra views' t for --policy fixed",
    )
    p.add_argument("--size", type=int, default=224, help="view side in pixels (default 224)")
    p.add_argument("--hash", choices=["official", "imagehash"], default="official", help="pHash flavour")
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy (default 0)")
    p.add_argument("--out", default=None, help="write a contact sheet PNG of the chosen views here")
    p.set_defaults(func=run)


def _policy_args(args) -> tuple[str, int, list[float] | None]:
    policy = args.policy or ("fixed" if args.t is not None else "greedy")
    if policy == "fixed":
        if args.t is None:
            raise UsageError("--policy fixed needs --t T [T ...]")
        extra = [t for t in args.t]
        if extra and extra[0] == 0.0:
            extra = extra[1:]
        if args.num_views is not None and args.num_views != 1 + len(extra):
            raise UsageError(f"--num-views {args.num_views} disagrees with the {len(extra)} extra view(s) given by --t")
        for t in extra:
            if not 0.0 <= t <= 1.0:
                raise UsageError(f"--t values must lie in [0, 1], got {t}")
        return policy, 1 + len(extra), extra
    if args.t is not None:
        raise UsageError(f"--t is only used by --policy fixed, not {policy}")
    num_views = 3 if args.num_views is None else args.num_views
    if not 1 <= num_views <= 11:
        raise UsageError(f"--num-views must be between 1 and 11, got {num_views}")
    if policy in ("greedy_unique", "random") and num_views > 11:
        raise UsageError(f"--num-views {num_views} exceeds the 10 candidates + view 0")
    return policy, num_views, None


def run(args) -> int:
    from ..view_records import run_views

    policy, num_views, ts = _policy_args(args)
    if not 8 <= args.size <= 4096:
        raise UsageError(f"--size must be between 8 and 4096, got {args.size}")
    if args.out is not None and not str(args.out).lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {args.out!r}")
    record = run_views(
        args.image,
        args.box,
        box_format=args.box_format,
        policy=policy,
        num_views=num_views,
        ts=ts,
        size=args.size,
        hash_flavour=args.hash,
        seed=args.seed,
        sheet=args.out,
    )
    print(json.dumps(record))
    return 0
