"""Your own images: index a folder with a run's network, query it, find its near-duplicates,
and export the network for use without this library.

    python -m ranking_lib index      --run-dir RUN --images DIR [--name NAME] [--model baseline]
    python -m ranking_lib query      --run-dir RUN --index NAME --image FILE | --file INDEXED
    python -m ranking_lib duplicates --run-dir RUN --index NAME [--threshold T]
    python -m ranking_lib export     --run-dir RUN --format torchscript|onnx [--out FILE]

An index lives in ``RUN/indexes/NAME/index.npz`` (`collection.store`). It records the folder,
every file's path, size, mtime and SHA-256, and the identity of the network that embedded it
(`network_identity`); a later ``index`` of the same folder embeds only new and changed files
and drops deleted ones, and an index made by another network is refused. Images are decoded
as the dataset was (`collection.files.read_image`: 64 px, bilinear) and embedded by the
network as in ``embed``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking_lib.collection import duplicates as dup
from ranking_lib.collection import store
from ranking_lib.collection.files import FORMATS, Skipped, file_sha256, read_image, walk_images
from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import read_json, write_json
from ranking_lib.core.names import MODELS
from ranking_lib.core.progress import progress as progress_bar
from ranking_lib.models.inference import embed_images
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.training.checkpoint import checkpoint_identity

IMAGE_SIZE = 64  # the dataset's decoded size (data.image_cache): what the network trained on
SHARD_SIZE = 512
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------------- network
def network_identity(cfg: RunConfig, model: str) -> dict:
    """What makes the embeddings of `model` in the run `cfg.run_dir` what they are: the
    checkpoint's step and weights' SHA-256 (``trained``: `training.checkpoint.checkpoint_identity`,
    as the run's own embedding files record it) or the pretrained backbone (``baseline``), the settings
    that shape the network's input and output, and ``key``, a hash of all that (the run's path,
    kept for the record, is not part of it)."""
    if model not in MODELS:
        raise RankingError(f"model must be one of {MODELS} (got {model!r})")
    ckpt = Path(cfg.run_dir, "checkpoints", "last.pt")
    if model == "trained" and not ckpt.is_file():
        raise RankingError(f"run {cfg.run_dir} has no trained network ({ckpt} not found): train it first, or "
                           "pass --model baseline for the frozen pretrained network")
    shape = {"model": model, "backbone": cfg.backbone, "pretrained": cfg.pretrained, "input_size": cfg.input_size,
             "image_size": IMAGE_SIZE, "flip_tta": cfg.flip_tta, "bf16_cpu": cfg.bf16_cpu}
    if model == "trained":
        shape.update(**checkpoint_identity(ckpt), embedding_dim=cfg.embedding_dim, head=cfg.head,
                     architecture=cfg.architecture, normalize_embeddings=cfg.normalize_embeddings)
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return {**shape, "run_dir": str(Path(cfg.run_dir).resolve()), "key": key}


def _describe(net: dict) -> str:
    what = (f"checkpoint step {net.get('checkpoint_step')}, weights {str(net['weights_sha256'])[:12]}"
            if net.get("weights_sha256") else "pretrained backbone")
    return f"{net.get('model')} network of {net.get('run_dir')} ({what}, {net.get('backbone')}, {net.get('input_size')} px)"


def _embedder(cfg: RunConfig, model: str):
    from ranking_lib.workflow import load_model, setup_torch

    setup_torch(cfg)
    net = load_model(cfg, model)

    def embed(images: np.ndarray) -> np.ndarray:
        return embed_images(net, images, cfg.embed_batch_size, cfg.device, baseline=model == "baseline",
                            progress=False, bf16_cpu=cfg.bf16_cpu, flip_tta=cfg.flip_tta)
    return embed


# ---------------------------------------------------------------------------------- the index
def index_dir(cfg: RunConfig, name: str) -> Path:
    if not _NAME.match(name or ""):
        raise RankingError(f"index name {name!r} must be a plain name (letters, digits, '.', '_', '-')")
    return Path(cfg.run_dir) / "indexes" / name


@dataclass
class IndexReport:
    path: Path
    images: int
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    resumed: int = 0  # taken from the shards of an interrupted run
    embedded: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    ignored: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"index {self.path}: {self.images:,} images (added {self.added:,}, changed {self.changed:,}, "
               f"removed {self.removed:,}, unchanged {self.unchanged:,}); embedded {self.embedded:,} now"
               + (f", {self.resumed:,} files taken from an interrupted run" if self.resumed else "")
               + f"; {len(self.skipped)} skipped; {self.seconds:.1f} s"]
        if self.ignored:
            out.append(f"{self.ignored:,} file(s) without an image suffix ({FORMATS}) left out")
        out += [f"skipped: {s.path}: {s.reason}" for s in self.skipped]
        return out


def _load_existing(path: Path, net: dict, root: Path) -> store.IndexData | None:
    if not path.is_file():
        return None
    old = store.load_npz(path)
    have = old.meta.get("network", {})
    if have.get("key") != net["key"]:
        raise RankingError(f"index {path.parent} was made by another network ({_describe(have)}; this is the "
                           f"{_describe(net)}): pass another --name, or delete {path.parent} to rebuild it")
    if old.meta.get("root") != str(root):
        raise RankingError(f"index {path.parent} holds the folder {old.meta.get('root')}, not {root}: pass that "
                           "folder, or another --name")
    return old


def index_folder(cfg: RunConfig, images: str | Path, *, name: str | None = None, model: str = "trained",
                 shard_size: int = SHARD_SIZE, progress: bool = True) -> IndexReport:
    """Index (or bring up to date) the images under `images`; see the module doc."""
    t0 = time.perf_counter()
    root = Path(images).expanduser().resolve()
    walk = walk_images(root)
    if not walk.files and not walk.skipped:
        raise RankingError(f"no images in {root} ({FORMATS}, searched recursively; {walk.ignored} other file(s))")
    if shard_size < 1:
        raise RankingError(f"shard size must be >= 1 (got {shard_size})")
    where = index_dir(cfg, name or re.sub(r"[^A-Za-z0-9._-]+", "_", root.name).lstrip("._-") or "images")
    net = network_identity(cfg, model)
    path = where / store.INDEX_FILE
    old = _load_existing(path, net, root)
    report = IndexReport(path, 0, skipped=list(walk.skipped), ignored=walk.ignored)
    keep, todo = _plan(walk.files, old, root, report)
    shards = store.Shards(where)
    resumed, fresh = _from_shards(todo, shards, net["key"], report)
    embed = _embedder(cfg, model) if fresh else None
    bar = progress_bar(total=len(fresh), desc=f"index {where.name}", unit="img", enabled=progress)
    for s in range(0, len(fresh), shard_size):
        part = _embed_shard(fresh[s:s + shard_size], root, embed, net["key"])
        shards.write(part)
        resumed.append(part)
        report.skipped += [Skipped.from_dict(x) for x in part.meta["skipped"]]
        report.embedded += len(part)  # this run's embeddings only
        bar.update(len(fresh[s:s + shard_size]))
    bar.close()
    report.skipped.sort(key=lambda x: x.path)
    meta = {"root": str(root), "network": net, "image_size": IMAGE_SIZE,
            "skipped": [x.to_dict() for x in report.skipped]}
    final = store.concat([keep, *resumed], meta)
    if not len(final):
        raise RankingError(f"none of the {len(report.skipped)} image file(s) in {root} could be read (first: "
                           f"{report.skipped[0].path}: {report.skipped[0].reason})")
    store.save_npz(path, final)
    shards.clear()
    report.images, report.seconds = len(final), time.perf_counter() - t0
    return report


def _from_shards(todo, shards: store.Shards, network_key: str, report: IndexReport):
    """(rows the shards of an interrupted run hold for `todo`, the files still to embed); the
    shards' skipped files go to the report."""
    done, done_skipped = shards.load(network_key)
    rows: dict[int, tuple[store.IndexData, list[int]]] = {}
    fresh = []
    for f in todo:
        k = (f.path, f.size, f.mtime_ns)
        if k in done:
            data, i = done[k]
            rows.setdefault(id(data), (data, []))[1].append(i)
        elif k in done_skipped:
            report.skipped.append(Skipped(f.path, done_skipped[k], f.size, f.mtime_ns))
        else:
            fresh.append(f)
    report.resumed = len(todo) - len(fresh)
    return [store.select(data, idx) for data, idx in rows.values()], fresh


def _plan(files, old: store.IndexData | None, root: Path, report: IndexReport):
    """(rows of `old` to keep, files to embed); counts added / changed / removed / unchanged."""
    if old is None:
        report.added = len(files)
        return store.select(store.empty({}), []), list(files)
    keep, todo, seen = [], [], set()
    before = {s.path: s for s in map(Skipped.from_dict, old.meta.get("skipped", []))}
    for f in files:
        i = old.row(f.path)
        if i is None and f.path in before and before[f.path].same_file(f):
            report.skipped.append(before[f.path])  # unreadable last time, unchanged since: not tried again
            continue
        if i is None:
            report.added += 1
            todo.append(f)
            continue
        seen.add(i)
        if int(old.sizes[i]) == f.size and int(old.mtimes[i]) == f.mtime_ns:
            keep.append(i)
        elif int(old.sizes[i]) == f.size and file_sha256(root / f.path) == old.sha256[i]:
            keep.append(i)  # touched, same bytes: keep the embedding, record the new mtime
            old.mtimes[i] = f.mtime_ns
        else:
            report.changed += 1
            todo.append(f)
    report.unchanged = len(keep)
    report.removed = len(old) - len(seen)
    return store.select(old, keep), todo


def _embed_shard(files, root: Path, embed, network_key: str) -> store.IndexData:
    """Decode, hash and embed `files`; unreadable ones go to the shard's skipped list."""
    arrays, ok, skipped, hashes = [], [], [], []
    for f in files:
        img, reason = read_image(root / f.path, IMAGE_SIZE)
        if img is None:
            skipped.append(Skipped(f.path, reason, f.size, f.mtime_ns).to_dict())
            continue
        arrays.append(img)
        ok.append(f)
        hashes.append(file_sha256(root / f.path))
    z = embed(np.stack(arrays)) if arrays else np.zeros((0, 0), np.float32)
    return store.IndexData(z, [f.path for f in ok], np.array([f.size for f in ok], np.int64),
                           np.array([f.mtime_ns for f in ok], np.int64), hashes,
                           {"format": store.FORMAT, "network_key": network_key, "skipped": skipped})


def open_index(cfg: RunConfig, name: str) -> tuple[store.IndexData, dict]:
    """An index and the identity of this run's network it was made with (refused when the run's
    network changed since)."""
    path = index_dir(cfg, name) / store.INDEX_FILE
    if not path.is_file():
        raise RankingError(f"index {path.parent} not found: build it with 'index --images DIR --name {name}'")
    data = store.load_npz(path)
    have = data.meta.get("network", {})
    net = network_identity(cfg, have.get("model", "trained"))
    if have.get("key") != net["key"]:
        raise RankingError(f"index {path.parent} was made by another network ({_describe(have)}; the run now "
                           f"has the {_describe(net)}): run 'index' again with another --name")
    return data, net


def _relative(file: str, root: Path) -> str:
    """`file` as a path of the index: absolute, or relative to the folder, or to the current directory."""
    p = Path(file).expanduser()
    if not p.is_absolute() and not (root / p).exists() and p.exists():
        p = p.resolve()
    if p.is_absolute():
        p = p.resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)
    return p.as_posix()


def search_index(cfg: RunConfig, data: store.IndexData) -> EmbeddingIndex:
    from ranking_lib.run_files import index_options

    return EmbeddingIndex(data.embeddings, np.zeros(len(data), np.int64), data.paths, **index_options(cfg))


def query_index(cfg: RunConfig, name: str, *, image: str | None = None, file: str | None = None,
                k: int | None = None) -> tuple[str, list[tuple[str, float]]]:
    """The `k` nearest indexed images of an image file, or of an indexed file (itself left out)."""
    if (image is None) == (file is None):
        raise RankingError("query --index needs exactly one of --image FILE or --file INDEXED_FILE")
    data, net = open_index(cfg, name)
    root = Path(data.meta["root"])
    exclude = None
    if file is not None:
        row = data.row(_relative(file, root))
        if row is None:
            raise RankingError(f"{file} is not in index {name} (paths are relative to {root})")
        z, what, exclude = data.embeddings[row], data.paths[row], np.array([row])
    else:
        img, reason = read_image(image, IMAGE_SIZE)
        if img is None:
            raise RankingError(reason)
        z, what = _embedder(cfg, net["model"])(img[None])[0], str(image)
    index = search_index(cfg, data)
    k = min(cfg.top_k_show if k is None else k, len(data) - (exclude is not None))
    if k < 1:
        raise RankingError(f"index {name} has no other image to return")
    idx, dist = index.topk(z[None], k, exclude=exclude)
    return what, [(data.paths[i], float(d)) for i, d in zip(idx[0], dist[0])]


# ---------------------------------------------------------------------------------- duplicates
DRAW = f"groups of {dup.PER_CLASS} val images of one class"  # how the calibration draws (a kept file of another is redone)


def duplicate_threshold(cfg: RunConfig, net: dict) -> dict:
    """The near-duplicate threshold of the run's network (`collection.duplicates.calibrate` on
    `near_dup_queries` val images of the run's data and their copies), computed once and kept in
    ``RUN/near_dup_threshold_<model>.json`` with the network's key and the calibration's rule."""
    from ranking_lib.retrieval.near_duplicates import TRANSFORMS
    from ranking_lib.workflow import load_caches

    path = Path(cfg.run_dir) / f"near_dup_threshold_{net['model']}.json"
    saved = read_json(path, "threshold file", missing_ok=True)
    if isinstance(saved, dict) and saved.get("network_key") == net["key"] and \
            saved.get("false_pair_rate") == dup.FALSE_PAIR_RATE and saved.get("draw") == DRAW:
        return saved
    try:
        val = load_caches(cfg, progress=False, splits=("val",))["val"]
    except RankingError as e:
        raise RankingError(f"the near-duplicate threshold is calibrated on the run's val images, which cannot be "
                           f"read ({e}); pass --threshold T") from None
    ids = dup.calibration_ids(val.labels, cfg.near_dup_queries or 1000, cfg.seed)
    pos, neg = dup.protocol_distances(_embedder(cfg, net["model"]), np.asarray(val.images[ids]), val.labels[ids],
                                      cfg.seed)
    out = {"network_key": net["key"], "model": net["model"], **dup.calibrate(pos, neg),
           "negatives": "pairs of different images of one class", "draw": DRAW, "images": int(len(ids)),
           "transforms": list(TRANSFORMS), "seed": cfg.seed, "data_dir": str(cfg.data_dir)}
    write_json(path, out)
    return out


def find_duplicates(cfg: RunConfig, name: str, *, threshold: float | None = None) -> dict:
    """Near-duplicate groups of an index; writes ``duplicates.csv`` and ``duplicates.html`` into
    the index's folder and returns what it found."""
    data, net = open_index(cfg, name)
    calib = duplicate_threshold(cfg, net) if threshold is None else None
    t = float(calib["threshold"]) if calib else float(threshold)
    from ranking_lib.run_files import index_options

    found = dup.groups(data.embeddings, dup.near_pairs(data.embeddings, t, index_options=index_options(cfg)), t)
    where = index_dir(cfg, name)
    title = f"{sum(map(len, found))} images in {len(found)} near-duplicate groups of {data.meta['root']} (d <= {t:.4f})"
    csv_path = dup.write_csv(where / "duplicates.csv", found, data.paths, data.embeddings)
    html_path = dup.write_contact_sheet(where / "duplicates.html", found, data.paths, embeddings=data.embeddings,
                                        root=Path(data.meta["root"]), title=title)
    return {"threshold": t, "calibration": calib, "groups": [[data.paths[i] for i in g] for g in found],
            "csv": csv_path, "html": html_path}


# ---------------------------------------------------------------------------------- export
def export_network(cfg: RunConfig, fmt: str, *, model: str = "trained", out: str | None = None) -> tuple[Path, Path]:
    """The run's network as a TorchScript or ONNX file (`models.export`) and its input contract."""
    from ranking_lib.models.export import FORMATS as EXPORT_FORMATS, SUFFIX, export
    from ranking_lib.workflow import load_model

    if fmt not in EXPORT_FORMATS:
        raise RankingError(f"export format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    net = network_identity(cfg, model)
    target = Path(out) if out else Path(cfg.run_dir) / "export" / f"embedder_{model}{SUFFIX[fmt]}"
    return export(load_model(cfg, model), target, fmt, image_size=IMAGE_SIZE, baseline=model == "baseline",
                  network=net)


# ---------------------------------------------------------------------------------- command line
COMMANDS = {
    "index": "embed every image under a folder (recursively) into RUN/indexes/NAME; a rerun embeds only "
             "new and changed files and drops deleted ones",
    "duplicates": "groups of near-duplicate images in an index; writes duplicates.csv and duplicates.html",
    "export": "write the run's network with its preprocessing as TorchScript or ONNX (uint8 HWC image in, "
              "embedding out) and a JSON of its input contract",
}


def add_arguments(parser, command: str) -> None:
    """The flags of `command` beyond the `RunConfig` fields (``query`` gets --index and --file)."""
    models = f"the network: {MODELS[0]} (the run's checkpoint) or {MODELS[1]} (the frozen pretrained backbone)"
    if command == "index":
        parser.add_argument("--images", required=True, help="the folder of images (JPEG, PNG, WebP, BMP, TIFF, GIF)")
        parser.add_argument("--name", help="the index's name under RUN/indexes (default: the folder's name, characters "
                                             "other than letters, digits, '.', '_' and '-' made '_')")
        parser.add_argument("--model", choices=MODELS, default="trained", help=models)
        parser.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                            help=f"images embedded between two saves; an interrupted run resumes from the last "
                                 f"(default {SHARD_SIZE})")
    elif command == "query":
        parser.add_argument("--index", help="query an index of your own images (made by 'index') instead of the "
                                            "training set; with --image FILE or --file INDEXED_FILE")
        parser.add_argument("--file", help="with --index: an indexed image (its path in the folder) to query with")
    elif command == "duplicates":
        parser.add_argument("--index", required=True, help="the index's name (see 'index --name')")
        parser.add_argument("--threshold", type=float, default=None,
                            help="largest distance of a near-duplicate pair (default: calibrated on the "
                                 "near-duplicate protocol, kept in RUN/near_dup_threshold_<model>.json)")
    elif command == "export":
        parser.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="the file's format")
        parser.add_argument("--model", choices=MODELS, default="trained", help=models)
        parser.add_argument("--out", help="the file to write (default RUN/export/embedder_<model>.pt|.onnx); "
                                          "its input contract goes beside it as <file>.json")


def command_config(args, cfg: RunConfig) -> RunConfig:
    """The settings of a command on a finished run: the run's own ``config.json`` (the network it
    trained) unless --config names another, then the profile and flags given, as `settings.resolve`
    orders them."""
    from ranking_lib.core.settings import resolve

    saved = Path(cfg.run_dir) / "config.json"
    if getattr(args, "config", None) or not saved.is_file():
        return cfg
    flags = {n: getattr(args, n) for n in RunConfig.field_names() if getattr(args, n, None) is not None}
    return resolve(getattr(args, "profile", None), flags, config_file=str(saved)).config


def run_command(args, cfg: RunConfig) -> int:
    """``index``, ``query --index``, ``duplicates``, ``export``: run and print."""
    cfg = command_config(args, cfg)
    progress = not getattr(args, "quiet", False)
    if args.command == "index":
        report = index_folder(cfg, args.images, name=args.name, model=args.model, shard_size=args.shard_size,
                              progress=progress)
        print("\n".join(report.lines()))
    elif args.command == "query":
        if not args.index or args.val_index:
            raise RankingError("query --index NAME takes --image FILE or --file INDEXED_FILE (--val-index queries "
                               "the run's val images against its training set, without --index)")
        what, hits = query_index(cfg, args.index, image=args.image, file=args.file, k=args.k)
        print(f"query {what}\n  top-{len(hits)}:")
        for path, d in hits:
            print(f"    {d:8.4f}  {path}")
    elif args.command == "duplicates":
        found = find_duplicates(cfg, args.index, threshold=args.threshold)
        c = found["calibration"]
        how = (f"calibrated on the near-duplicate protocol ({c['images']} val images of {c['data_dir']} and their "
               f"{', '.join(c['transforms'])} copies; {c['false_pair_rate']:g} of the pairs of different images of "
               f"one class within it): pair precision {c['precision']:.1f} %, recall {c['recall']:.1f} %" if c else "given")
        print(f"threshold {found['threshold']:.4f} ({how})")
        note = dup.calibration_note(c) if c else None
        if note:
            print(note)
        print(f"{len(found['groups'])} group(s) of near-duplicates, {sum(map(len, found['groups']))} images")
        for g, members in enumerate(found["groups"][:20], 1):
            print(f"  {g}: " + "  ".join(members))
        print(f"written: {found['csv']}, {found['html']}")
    elif args.command == "export":
        out, contract = export_network(cfg, args.format, model=args.model, out=args.out)
        print(f"exported the {args.model} network to {out} (input contract: {contract})")
    return 0
