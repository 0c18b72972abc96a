"""Command line: ``python -m ranking_lib <command> [--field value ...]``.

Every `RunConfig` field is a flag of the same name (``--input-size 128``, ``--no-pretrained``),
so CLI runs, notebook parameters and profiles are interchangeable. ``--profile NAME`` loads
``profiles/NAME.yaml`` first; ``--config FILE`` loads a saved ``config.json``; explicit flags win.

Commands: prepare, sample, train, embed, evaluate, query, all; index, duplicates, export (your own
images: `ranking_lib.own_images`); verify-run RUN_DIR [--card CARD]
recomputes a run's metrics from its saved embeddings and compares them with its run card.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import re
import signal
import sys
import threading
from pathlib import Path

from ranking_lib.core.log import show_messages
from ranking_lib.choices import check_choices, choices
from ranking_lib.core.config import RunConfig, field_doc, field_kind
from ranking_lib.core.names import MODELS
from ranking_lib.core.errors import DiskFullError, RankingError
from ranking_lib.core.settings import Settings, resolve



def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per RunConfig field: its help from the field's docstring (`flag_help`), a choice
    field's ``choices`` from its registry (`ranking_lib.choices`)."""
    for name in RunConfig.field_names():
        flag = "--" + name.replace("_", "-")
        kind = field_kind(name)
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=flag_help(name))
        elif kind == "tuple":
            parser.add_argument(flag, dest=name, type=int, nargs="+", default=None, help=flag_help(name))
        else:
            parser.add_argument(flag, dest=name, type={"int": int, "float": float}.get(kind, str), default=None,
                                choices=choices(name), help=flag_help(name))


def flag_help(name: str) -> str:
    """The first sentence of the field's docstring (markup dropped) and its default."""
    doc = field_doc(name).replace("``", "").replace("`", "")
    first = re.match(r"(.+?[.!?])(?=\s+[A-Z(]|$)", doc)
    text = first.group(1) if first else doc
    default = RunConfig.__dataclass_fields__[name].default
    if isinstance(default, bool):
        text += f" (default: {'on' if default else 'off'})"
    elif isinstance(default, tuple):
        text += f" (default: {' '.join(map(str, default))})"
    elif default is not None and default is not dataclasses.MISSING:
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def settings_from_args(args: argparse.Namespace) -> Settings:
    """profile < --config < flags, through the one resolver (`settings.resolve`); an unknown choice
    (from a profile or a config file; flags are refused by argparse) is one RankingError."""
    flags = {n: getattr(args, n) for n in RunConfig.field_names() if getattr(args, n, None) is not None}
    settings = resolve(args.profile, flags, config_file=args.config)
    check_choices(settings.config)
    return settings


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return settings_from_args(args).config


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ranking_lib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    from ranking_lib import own_images
    helps = {
        "prepare": "decode the dataset once into the uint8 cache",
        "sample": "sample and save training and val triplets",
        "train": "train the ranking network (resumes from the run's last checkpoint)",
        "embed": "embed train (database) and val (queries); writes embeddings_<model>_<split>.npz",
        "evaluate": "triplet accuracy and retrieval metrics; prints and writes metrics_<model>.json",
        "query": "top-k and bottom-k training images for val indices or an image file",
        "all": "prepare, sample, train, embed and evaluate (trained and baseline)",
        **own_images.COMMANDS,
    }
    for name, h in helps.items():
        sp = sub.add_parser(name, help=h, description=h, usage="%(prog)s [options]")  # each option below
        sp.add_argument("--profile", help="profiles/<NAME>.yaml (or a .yaml path) as base settings")
        sp.add_argument("--config", help="a config.json to start from (e.g. a run's)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        add_config_flags(sp)
        if name in ("embed", "evaluate", "query"):
            sp.add_argument("--model", choices=MODELS, default="trained",
                            help="trained (the run's checkpoint) or baseline (the untrained network) (default: trained)")
        if name == "query":
            sp.add_argument("--val-index", type=int, nargs="+", help="val image indices")
            sp.add_argument("--image", help="an image file to query with")
            sp.add_argument("--k", type=int, default=None, help="how many nearest/farthest (default top_k_show)")
        if name == "train":
            sp.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
        own_images.add_arguments(sp, name)
        if name in ("sample", "all"):
            sp.add_argument("--replace-triplets", action="store_true",
                            help="replace the run's triplet files even when they were sampled with other settings "
                                 "(refused otherwise: a checkpoint trained on them would no longer match)")
    from ranking_lib.verify import DEFAULT_TOLERANCE

    v = sub.add_parser("verify-run", help="recompute a run's metrics from its embeddings and compare with a card",
                       description="Recompute the metrics of RUN_DIR from its saved embeddings and triplets and "
                                   "compare them with a run card (default: RUN_DIR/run_card.json; a kept card such "
                                   "as docs/runs/NAME/card.json to check a run of the same recipe).")
    v.add_argument("run_dir", metavar="RUN_DIR", help="the run directory whose metrics are recomputed")
    v.add_argument("--card", help="the card to compare with (default RUN_DIR/run_card.json)")
    v.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest difference allowed, in percentage points (default {DEFAULT_TOLERANCE})")
    return p


def _print_metrics(metrics: dict) -> None:
    keys = list(dict.fromkeys(k for m in metrics.values() for k, v in m.items()
                              if k not in ("num_queries", "num_triplets", "queries_without_match")
                              and not k.endswith(("_counted", "_k"))
                              and isinstance(v, (int, float)) and not isinstance(v, bool)))  # numbers only
    print("split  " + "  ".join(f"{k:>15}" for k in keys))
    for split, m in metrics.items():
        print(f"{split:<6} " + "  ".join(f"{m[k]:>15.2f}" if k in m else f"{'-':>15}" for k in keys))
    for split, m in metrics.items():
        if m.get("queries_without_match"):
            print(f"note: {m['queries_without_match']} {split} queries have no image of their class in the "
                  "database (no ranking can answer them right; they lower every metric)")


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input / refused (one line on stderr), 1 an OS error (one line)."""
    from_command_line = argv is None
    args = build_parser().parse_args(argv)
    show_messages()  # the library's log lines (plans, caches built, re-plans) as plain lines
    settings = None
    before = _stop_on_sigterm()
    try:
        if args.command == "verify-run":
            from ranking_lib.verify import main_verify

            return main_verify(args.run_dir, args.card, args.tolerance)
        settings = settings_from_args(args)
        # the profile's env (allocator settings) must be there when the process starts: a
        # command-line run re-executes itself once with it; a caller of main() keeps its process
        from ranking_lib.core.settings import apply_env

        apply_env(settings.env, ["-m", "ranking_lib", *sys.argv[1:]] if from_command_line else None)
        for line in settings.notes:
            print(f"note: {line}")
        if settings.make_demo_data and args.command in ("prepare", "all"):  # the demo profile's data
            from ranking_lib.data.demo import ensure_demo_dataset

            ensure_demo_dataset(settings.config.data_dir)
        return run(args, settings.config, argv if argv is not None else sys.argv[1:])
    except DiskFullError as e:  # the environment, not the input: exit 1 like any OS error
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RankingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"error: {interrupted(args, settings.config if settings else None, 'terminated (SIGTERM)')}",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"error: {interrupted(args, settings.config if settings else None)}", file=sys.stderr)
        return 130
    except OSError as e:  # the environment, not the input: disk, permissions, ...
        from ranking_lib.core.fileio import disk_full_error, is_disk_full

        if is_disk_full(e):
            print(f"error: {disk_full_error(e.filename or '.')}", file=sys.stderr)
            return 1
        where = f": {e.filename}" if e.filename else ""
        hint = ("; that place cannot be written: pass a --run-dir (or --cache-dir) on a writable filesystem, "
                "or make it writable") if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else ""
        print(f"error: {e.strerror or type(e).__name__}{where}{hint}", file=sys.stderr)
        return 1
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``): the command stops as on Ctrl-C (files being
    written are dropped whole, the run directory's lock is released), with one line."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _stop_on_sigterm():
    """Make SIGTERM raise `Terminated` in this (main) thread; returns the handler it replaced
    (None where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def interrupted(args: argparse.Namespace, cfg: RunConfig | None, how: str = "interrupted") -> str:
    """The line for a Ctrl-C (or SIGTERM, `how`): where the step stopped and, for training, where
    the next `train` resumes (its last checkpoint; files are written whole or not at all)."""
    cmd = args.command
    if cfg is None or cmd not in ("train", "all"):
        return f"{how}: {cmd} stopped; every file is written whole or not at all, so run it again to finish"
    from ranking_lib.training.checkpoint import read_checkpoint

    run = Path(cfg.run_dir)
    ckpt = run / "checkpoints" / "last.pt"
    try:
        resume_at = int(read_checkpoint(ckpt).get("step", 0)) if ckpt.is_file() else 0
    except (RankingError, OSError, ValueError):
        resume_at = 0
    try:
        rows = (run / "loss_log.csv").read_text().strip().splitlines()
        logged = int(rows[-1].split(",")[0]) + 1 if len(rows) > 1 else None
    except (OSError, ValueError, IndexError):
        logged = None
    where = f" after step {logged:,} of {cfg.steps:,} (the loss log's last row)" if logged else ""
    nxt = (f"the next 'train' resumes from step {resume_at:,} ({ckpt}, saved every "
           f"checkpoint_every={cfg.checkpoint_every} steps)" if resume_at else
           f"no checkpoint was saved yet (one every checkpoint_every={cfg.checkpoint_every} steps): the next "
           "'train' starts from step 0")
    return f"{how}: {cmd} stopped{where}; {nxt}"


class _Parser(argparse.ArgumentParser):
    """Bad flags are one ``error:`` line (and where to find help), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run(args: argparse.Namespace, cfg: RunConfig, argv: list[str] | None = None) -> int:
    from ranking_lib.training import distributed
    from ranking_lib import workflow
    from ranking_lib.core.runlock import RunDirLock

    if args.command == "query":  # reads only
        return _run(args, cfg, workflow)
    if distributed.launched_by_torchrun():
        return _run_distributed(args, cfg, workflow)
    with RunDirLock(cfg.run_dir, f"python -m ranking_lib {args.command}"):
        if args.command != "all":
            return _run(args, cfg, workflow)
        import shlex

        from ranking_lib.core.runcard import write_card

        phases: dict[str, float] = {}
        rc = _run(args, cfg, workflow, phases)
        command = " ".join(["python -m ranking_lib", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
        print(f"run card written to {write_card(cfg.run_dir, command=command, phases=phases, config=cfg.to_dict())}")
        return rc


def _run_distributed(args: argparse.Namespace, cfg: RunConfig, workflow) -> int:
    """One rank of ``torchrun ... -m ranking_lib train|embed`` (see `ranking_lib.training.distributed`)."""
    import contextlib
    import os

    from ranking_lib.training import distributed
    from ranking_lib.core.runlock import RunDirLock

    if args.command not in DISTRIBUTED_COMMANDS:
        raise RankingError(f"under torchrun only {' and '.join(DISTRIBUTED_COMMANDS)} run on several processes "
                           f"(got {args.command}): run it as python -m ranking_lib {args.command}")
    ctx = distributed.init_from_env(cfg.device)
    try:
        if ctx.is_main:
            with RunDirLock(cfg.run_dir, f"torchrun -m ranking_lib {args.command} ({ctx.world_size} ranks)"):
                return _run(args, cfg, workflow)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _run(args, cfg, workflow)
    finally:
        distributed.finish()


DISTRIBUTED_COMMANDS = ("train", "embed")


def _run(args: argparse.Namespace, cfg: RunConfig, workflow, phases: dict[str, float] | None = None) -> int:
    """Run the command's steps; `phases` (given for ``all``) collects each step's wall time in s."""
    import time

    progress = not args.quiet
    cmd = args.command
    if cmd in ("index", "duplicates", "export") or (cmd == "query" and (args.index or args.file)):
        from ranking_lib import own_images

        return own_images.run_command(args, cfg)
    if cmd == "all":  # refused before `prepare` does any work
        workflow.check_sample_size(cfg)
    phases = {} if phases is None else phases
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock[0]
        clock[0] = now

    if cmd in ("prepare", "all"):
        caches = workflow.prepare(cfg, progress=progress)
        for s, c in caches.items():
            print(f"{s}: {len(c)} images, {len(set(c.labels.tolist()))} classes, {len(c.skipped)} skipped")
        for line in getattr(caches, "checks", []):  # warnings went to stderr as log lines
            if not line.startswith("warning: "):
                print(line)
        lap("prepare")
    if cmd in ("sample", "all"):
        t = workflow.sample(cfg, replace=getattr(args, "replace_triplets", False))
        lap("sample")
        what = (f"{len(t['train'])} train (for scoring; training draws online)" if cfg.triplet_source == "online"
                else f"{len(t['train'])} train")
        print(f"sampled {what} and {len(t['val'])} val triplets (seed {cfg.seed}) into {cfg.run_dir}")
    if cmd in ("train", "all"):
        r = workflow.train(cfg, progress=progress, resume=not getattr(args, "no_resume", False))
        print(f"trained to step {r.steps} in {r.wall_s:.1f} s ({r.triplets_per_s:.1f} triplets/s); "
              f"checkpoint {r.checkpoint}")
        lap("train")
    models = MODELS if cmd == "all" else (getattr(args, "model", "trained"),)
    if cmd in ("embed", "all"):
        for m in models:
            workflow.embed(cfg, m, progress=progress)
            lap(f"embed_{m}")
    if cmd in ("evaluate", "all"):
        for m in models:
            metrics = workflow.evaluate(cfg, m)
            print(f"[{m}] metrics (percent) written to {Path(cfg.run_dir) / f'metrics_{m}.json'}")
            _print_metrics(metrics)
            lap(f"evaluate_{m}")
    if cmd == "query":
        if bool(args.val_index) == bool(args.image):
            raise RankingError("query needs exactly one of --val-index N [N ...] or --image FILE")
        results = ([workflow.query_image_file(cfg, args.image, args.k, args.model)] if args.image
                   else workflow.query(cfg, args.val_index, args.k, args.model))
        db = workflow.load_index(cfg, args.model, "train")
        for r in results:
            print(f"query {r.query_path}" + (f" (class {r.query_class})" if r.query_class else ""))
            for title, idx, dist in (("top", r.top_indices, r.top_distances), ("bottom", r.bottom_indices, r.bottom_distances)):
                print(f"  {title}-{len(idx)}:")
                for i, d in zip(idx, dist):
                    print(f"    {d:8.4f}  {db.paths[i]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
