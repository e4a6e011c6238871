"""What the training verbs share: their flags and their summary."""
from __future__ import annotations

import argparse
import json
import shlex
import sys


def int_list(text: str) -> tuple[int, ...]:
    """``3000,2000,1000`` -> ``(3000, 2000, 1000)`` (an argparse type)."""
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3000,2000,1000, got {text!r}") from None


def add_run_flags(parser: argparse.ArgumentParser, default: str, set_example: str) -> None:
    """``--config --set --print-config --list-presets --resume --stop-after-epoch`` of a training verb."""
    parser.add_argument("--config", default=default,
                        help=f"preset name (see --list-presets) or YAML file; default: {default}")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override one field, e.g. {set_example}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-presets", action="store_true", help="list the built-in presets and exit")
    parser.add_argument("--resume", default=None, metavar="PATH|latest|RUN",
                        help="continue the newest run of this config name (latest) or the run named RUN (its "
                             "directory under checkpoint.storage_path), or start a new run from a checkpoint (or "
                             "run) directory PATH")
    parser.add_argument("--stop-after-epoch", dest="stop_after_epoch", type=int, default=None,
                        help="checkpoint and exit after this epoch (resume later with --resume latest)")
    parser.add_argument("--local", action="store_true",
                        help="size workers, data CPUs and clustering actors to this machine (= --set "
                             "resources.profile=local; a --set of those fields still wins)")


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides of a training verb, ``--local`` first (so an explicit ``--set`` wins)."""
    return (["resources.profile=local"] if getattr(args, "local", False) else []) + list(args.set or ())


def list_presets_if_asked(args: argparse.Namespace, preset_dir) -> bool:
    """``--list-presets``: print the presets of ``preset_dir`` with their descriptions (no torch import); True if
    that was the command."""
    if not getattr(args, "list_presets", False):
        return False
    from hierclr.config.loader import preset_table

    print(preset_table(preset_dir))
    return True


def resolve_config(args: argparse.Namespace, load):
    """``--print-config`` answered here (returns None: done); else the validated config."""
    cfg = load()
    if getattr(args, "print_config", False):
        print(cfg.to_yaml(), end="")
        return None
    return cfg


def resume_command(args: argparse.Namespace, run_name: str) -> str:
    """The command line that continues run ``run_name``: the verb's arguments as typed (``args.argv``), any
    ``--resume`` replaced by ``--resume <run_name>``."""
    tokens = list(getattr(args, "argv", None) or [])
    if args.command in tokens:
        tokens = tokens[tokens.index(args.command) + 1:]
    kept, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
        elif tok == "--resume":
            skip = True
        elif not tok.startswith("--resume="):
            kept.append(tok)
    return shlex.join(["hierclr", args.command, *kept, "--resume", run_name])


def train_and_report(cfg, args: argparse.Namespace, keep, floor: dict | None = None) -> int:
    """Run ``cfg`` with the one driver (the rank-0 worker prints each epoch's line); print a JSON summary with the
    chosen (``keep``) numbers of the last epoch, and next to the last kNN top-1 the raw-pixel ``floor`` of the same
    split when one is given (:mod:`hierclr.eval.pixel_floor`)."""
    import time

    from hierclr.runtime.driver import RunFailedError, run_training

    t0 = time.perf_counter()
    try:
        result = run_training(cfg, resume=args.resume, stop_after_epoch=args.stop_after_epoch)
    except RunFailedError as e:
        print(f"hierclr {args.command}: error: run {e.run_name} failed: {e.cause}", file=sys.stderr)
        if e.checkpoint is None:
            print(f"hierclr {args.command}: the run wrote no checkpoint; nothing to resume", file=sys.stderr)
        else:
            print(f"hierclr {args.command}: its last checkpoint is epoch {e.epoch}'s ({e.checkpoint}); continue the "
                  f"run with:\n  {resume_command(args, e.run_name)}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    summary = {"run_dir": result.run_dir, "checkpoint": result.checkpoint, "best": result.best,
               "last_epoch": {k: round(v, 4) for k, v in last.items() if keep(k)},
               "mlflow_run_id": result.mlflow_run_id, "bad_images": len(result.bad_images)}
    if floor is not None:
        summary["knn_pixel_floor"] = {k: round(v, 4) for k, v in floor.items() if k.startswith("top1_k")}
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - t0, 1)}))
    learned = result.history[-1].get("knn/top1_best") if result.history else None
    if floor is not None and learned is not None:
        print(f"kNN top-1 on {cfg.data.val}: {learned:.3f} learned vs {floor['top1_best']:.3f} from raw pixels "
              f"(k = {floor['best_k']}, same split and vote): {'above' if learned > floor['top1_best'] else 'NOT above'}"
              " the floor")
    return 0
