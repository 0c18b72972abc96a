"""Run the numbered notebooks headless with papermill, then build the report with nbconvert.

    python report/run_pipeline.py --profile demo
    python report/run_pipeline.py --profile sample --run-dir runs/sample-lr3 --set lr=0.003
    python report/run_pipeline.py --profile demo --notebooks 03,04,05 --no-pdf

Settings come from one place: ``profiles/<profile>.yaml`` (RunConfig fields, plus the runner's
keys ``make_demo_data`` and ``env``), overridden by ``--data-dir``, ``--run-dir`` and
``--set key=value`` (values parsed as YAML: ``--set ks=[1,5] max_classes=null``). Every notebook
receives two parameters, ``profile`` (the profile's file) and ``overrides`` (the command line's
settings, paths absolute), and resolves them with ``settings.notebook_config``: the same resolver
as here, so every notebook runs with the config validated here. Executed notebooks go to ``<run-dir>/notebooks/``; the run stops at the first
failing notebook with one line naming it and the failing cell. Then ``05_report`` is converted
to ``<run-dir>/report.html`` and ``<run-dir>/report.pdf`` (code hidden unless ``--show-code``).

Exit status: 0 success, 1 a notebook failed, 2 bad arguments/profile, 3 report conversion failed,
4 a notebook's kernel died (a batch job may requeue: training resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
REPORT_NOTEBOOK = "05_report.ipynb"
TEMPLATE = ROOT / "ranking_lib" / "reporting" / "templates" / "deep_ranking.tex.j2"
KERNEL = "python3"
EXIT_DEAD_KERNEL = 4


class RunnerError(Exception):
    """A problem with the runner's arguments or profile (exit status 2)."""


# ---- settings ------------------------------------------------------------------------------
def parse_set(items: list[str]) -> dict:
    """``--set key=value ...`` -> {key: value}, values parsed as YAML (1e-4 is a float)."""
    from ranking_lib.core.errors import RankingError
    from ranking_lib.core.settings import parse_yaml_scalar

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunnerError(f"--set expects key=value (got {item!r})")
        try:
            out[key.strip().replace("-", "_")] = parse_yaml_scalar(value)
        except RankingError as e:
            raise RunnerError(f"--set {key.strip()}: {e}") from None
    return out


def resolve_settings(args) -> tuple[dict, dict]:
    """(notebook settings, runner settings) through the one resolver (`ranking_lib.core.settings`):
    profile < --data-dir/--run-dir < --set; every field validated before a kernel starts."""
    from ranking_lib.choices import check_choices
    from ranking_lib.core.settings import resolve

    overrides = parse_set(args.set or [])
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    resolved = resolve(args.profile, overrides)  # RankingError -> exit 2
    check_choices(resolved.config)  # an unknown backbone, optimizer, ... likewise
    cfg = resolved.config.to_dict()
    settings = {k: cfg[k] for k in sorted(resolved.explicit)}
    return settings, {"env": resolved.env, "make_demo_data": resolved.make_demo_data,
                      "notebook": notebook_parameters(args.profile, overrides, cfg), "config": resolved.config}


def notebook_parameters(profile: str, overrides: dict, cfg: dict) -> dict:
    """What papermill injects into every notebook: ``profile`` (a name, or a .yaml path made
    absolute) and ``overrides`` (the command line's settings, their paths resolved here, since
    the kernel runs in ``notebooks/``)."""
    from ranking_lib.core.settings import PATH_KEYS, profile_path

    if str(profile).endswith((".yaml", ".yml")):
        profile = str(profile_path(profile).resolve())
    return {"profile": str(profile),
            "overrides": {k: cfg[k] if k in PATH_KEYS else v for k, v in overrides.items()}}


def parameter_defaults(nb_path: Path) -> dict:
    """{name: default} for every name the notebook's `parameters` cell assigns, read with `ast`
    (papermill's `inspect_notebook` skips lines it cannot parse, e.g. ``x = None  # note``, and a
    skipped name would then travel in `extra` as well and clash in the notebook)."""
    import ast

    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise RunnerError(f"{nb_path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise RunnerError(f"{nb_path.name}: parameters cell line {node.lineno} is not `name = literal`")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise RunnerError(f"{nb_path.name}: parameters cell line {node.lineno} is not a literal") from None
    return out


def declared_parameters(nb_path: Path) -> list[str]:
    """Names the notebook's `parameters` cell assigns; it must take ``profile`` and ``overrides``."""
    names = list(parameter_defaults(nb_path))
    if not {"profile", "overrides"} <= set(names):
        raise RunnerError(f"{nb_path.name}: the parameters cell must assign `profile` and `overrides`")
    return names


def select_notebooks(spec: str | None) -> list[Path]:
    all_nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not all_nbs:
        raise RunnerError(f"no notebooks found in {NOTEBOOK_DIR}")
    if not spec:
        return all_nbs
    chosen = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        match = [p for p in all_nbs if p.name.startswith(tok.zfill(2) if tok.isdigit() else tok)]
        if not match:
            raise RunnerError(f"no notebook matches {tok!r} (have: {', '.join(p.stem for p in all_nbs)})")
        chosen += [p for p in match if p not in chosen]
    return sorted(chosen)


# ---- execution -----------------------------------------------------------------------------
def kernel_env(extra_env: dict | None) -> None:
    """The kernels inherit this process's environment: make the repository importable."""
    pp = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + pp if pp else "")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    os.environ.setdefault("RANKING_PROGRESS", "lines")  # no tqdm bars in executed notebooks
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for k, v in (extra_env or {}).items():
        os.environ[str(k)] = str(v)


def ensure_kernel() -> None:
    """papermill's `python3` kernel must run this interpreter (where ranking_lib's deps are)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        exe = spec.argv[0]
    except NoSuchKernel:
        exe = None
    # jupyter_client runs specs whose argv[0] is plain "python" with sys.executable
    if exe in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        return
    if exe and Path(exe).resolve() == Path(sys.executable).resolve():
        return
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix, kernel_name=KERNEL)  # same as python -m ipykernel install --sys-prefix


def kernel_manager_config() -> dict:
    """Encrypt the kernel's local connection when possible (silences ipykernel's TCP warning)."""
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if "transport_encryption" not in KernelManager.class_trait_names():
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


def failure_line(nb_path: Path, out_path: Path, err) -> str:
    """One line: notebook, failing cell (index and execution count, first source line), error."""
    import nbformat

    idx = getattr(err, "cell_index", None)
    where, src = f"cell {idx}", ""
    try:
        nb = nbformat.read(out_path, as_version=4)
        cell = nb.cells[idx]
        src = next((ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
        if cell.get("execution_count"):
            where += f" [exec {cell.execution_count}]"
    except Exception:  # noqa: BLE001 - the error line must still come out
        pass
    ename = getattr(err, "ename", type(err).__name__)
    evalue = (getattr(err, "evalue", None) or str(err)).strip().splitlines()
    evalue = evalue[0] if evalue else ""
    src = f" `{src[:60]}{'...' if len(src) > 60 else ''}`" if src else ""
    return f"error: {nb_path.name} failed in {where}{src}: {ename}: {evalue} (executed notebook: {out_path})"


@contextlib.contextmanager
def stderr_to(log_path: Path | None):
    """Send file descriptor 2 (this process's and the kernel subprocess's stderr) to a log file,
    so kernel chatter (e.g. "KeyboardInterrupt caught in kernel" at shutdown) never mixes with
    the runner's one-line error. `None` leaves stderr alone (--verbose)."""
    if log_path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def execute(nb_path: Path, out_path: Path, params: dict, log_output: bool, timeout: int | None) -> float:
    import papermill as pm

    declared_parameters(nb_path)
    t0 = time.perf_counter()
    with stderr_to(None if log_output else out_path.parent / "kernels.log"):
        pm.execute_notebook(str(nb_path), str(out_path), parameters=params, kernel_name=KERNEL,
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=log_output,
                            execution_timeout=timeout, **kernel_manager_config())
    return time.perf_counter() - t0


# ---- report --------------------------------------------------------------------------------
def report_notebook(executed: Path, title: str | None = None):
    """The executed report notebook, ready for export: stderr and empty outputs dropped."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    if title:
        nb.metadata["title"] = title
    return nb


def build_report(executed: Path, run_dir: Path, pdf: bool, show_code: bool, title: str | None) -> list[Path]:
    from nbconvert import HTMLExporter, PDFExporter

    nb = report_notebook(executed, title)
    quiet = logging.getLogger("run_pipeline.nbconvert")  # nbconvert's warnings and LaTeX dumps
    quiet.setLevel(logging.CRITICAL + 1)
    opts = dict(exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True, log=quiet)
    written = []
    html, _ = HTMLExporter(**opts).from_notebook_node(copy.deepcopy(nb))
    (run_dir / "report.html").write_text(html)
    written.append(run_dir / "report.html")
    if pdf:
        from nbconvert.exporters.pdf import LatexFailed

        # two xelatex passes: the second settles the PDF outline; nothing refers to a page number
        exporter = PDFExporter(**opts, template_file=str(TEMPLATE), latex_count=2)
        try:
            data, _ = exporter.from_notebook_node(copy.deepcopy(nb), resources={"metadata": {"name": "report"}})
        except LatexFailed as e:
            log = run_dir / "report_latex.log"
            log.write_text(e.output or "")
            raise RuntimeError(f"xelatex failed (its output is in {log})") from None
        (run_dir / "report.pdf").write_bytes(data)
        written.append(run_dir / "report.pdf")
    return written


# ---- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", help="profiles/<NAME>.yaml or a .yaml path (default: demo)")
    p.add_argument("--data-dir", help="dataset root (overrides the profile)")
    p.add_argument("--run-dir", help="run directory (overrides the profile)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", action="extend", default=[],
                   help="override settings, e.g. --set steps=50 lr=0.003")
    p.add_argument("--notebooks", help="comma-separated subset, e.g. 01,02 (default: all)")
    p.add_argument("--no-pdf", action="store_true", help="build report.html only")
    p.add_argument("--no-report", action="store_true", help="only execute the notebooks")
    p.add_argument("--show-code", action="store_true", help="include code cells in the report")
    p.add_argument("--title", help="report title (default: the report notebook's)")
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the notebooks' outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        logging.getLogger("papermill").setLevel(logging.ERROR)
    logging.getLogger("ranking_lib").setLevel(logging.INFO)  # the library's own lines (e.g. the demo data made)
    try:
        settings, runner = resolve_settings(args)
        notebooks = select_notebooks(args.notebooks)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # RankingError from the config module
        print(f"error: {e}", file=sys.stderr)
        return 2

    from ranking_lib.core.errors import DiskFullError
    from ranking_lib.core.runlock import TOKEN_ENV, RunDirLock

    try:
        with RunDirLock(settings["run_dir"], "run_pipeline.py") as lock:
            os.environ[TOKEN_ENV] = lock.token  # the kernels write under this runner's lock
            phases: dict[str, float] = {}
            rc = run_notebooks(args, settings, runner, notebooks, phases)
            if rc == 0:
                write_run_card(settings, phases, argv)
            return rc
    except DiskFullError as e:  # the environment, not the input: exit 1 like any OS error
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # RankingError: run dir busy or not a directory
        print(f"error: {e}", file=sys.stderr)
        return 2


def write_run_card(settings: dict, phases: dict[str, float], argv: list[str] | None) -> None:
    """``run_card.json`` in the run dir: config, metrics, training summary, each notebook's wall
    time, the machine and the checkout's commit (`ranking_lib.core.runcard`)."""
    import shlex

    from ranking_lib.core.runcard import write_card

    from ranking_lib.core.settings import planned_steps

    if settings.get("train_minutes") is not None or settings.get("budget_minutes") is not None:
        # the steps the budget chose during this run
        chosen = planned_steps(settings["run_dir"], settings.get("train_minutes"), settings.get("budget_minutes"))
        settings = settings if chosen is None else {**settings, "steps": chosen}
    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python report/run_pipeline.py", *map(shlex.quote, args)])
    path = write_card(settings["run_dir"], command=command, phases=phases, config=settings)
    print(f"wrote {path}")
    check = json.loads(path.read_text()).get("budget_check")
    if check and check.get("budget_s"):
        from ranking_lib.training.budget import format_minutes

        est, took = check.get("evaluation_estimate_s"), check.get("evaluation_s")
        print(f"budget {format_minutes(check['budget_s'])}: the run took {format_minutes(check['wall_s'])}; "
              f"training {format_minutes(check['training_loop_s'])} of {format_minutes(check['training_planned_s'])} "
              f"planned ({check['replans']} re-plans); evaluation {format_minutes(took or 0)} "
              f"(estimated {format_minutes(est or 0)})", flush=True)


def budget_line(run_dir: Path) -> None:
    """After training: the steps a time budget chose and the rate it measured (train_summary.json)."""
    try:
        summary = json.loads((run_dir / "train_summary.json").read_text())
    except (OSError, ValueError):
        return
    b = summary.get("budget") if isinstance(summary, dict) else None
    if isinstance(b, dict) and b.get("steps"):
        from ranking_lib.training.budget import format_minutes

        whole = (f"budget {b['budget_minutes']:g} min end to end, {format_minutes(b.get('spent_s', 0))} spent "
                 f"before training, evaluation ~{format_minutes(b.get('evaluation_s', 0))} (estimate): training "
                 if b.get("budget_minutes") is not None else "budget ")
        print(f"  {whole}{format_minutes(b.get('train_minutes', 0) * 60)} -> {b['steps']:,} steps at "
              f"{b.get('steps_per_s', float('nan')):.2f} steps/s (measured when training started)", flush=True)


def run_notebooks(args, settings: dict, runner: dict, notebooks: list[Path],
                  phases: dict[str, float] | None = None) -> int:
    """Execute `notebooks`, then build the report; `phases` collects each one's wall time (s)."""
    phases = {} if phases is None else phases
    from ranking_lib.core.plan import PIPELINE_STARTED

    os.environ[PIPELINE_STARTED] = repr(time.time())  # a whole-pipeline budget counts from here
    run_dir = Path(settings["run_dir"])
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    if runner.get("make_demo_data"):
        from ranking_lib.data.demo import ensure_demo_dataset

        ensure_demo_dataset(settings["data_dir"])
    kernel_env(runner.get("env"))
    ensure_kernel()
    if runner.get("config") is not None:
        from ranking_lib.core.plan import describe_plan
        from ranking_lib.run_settings import workload

        for line in describe_plan(workload(runner["config"])):
            print(line, flush=True)

    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    for nb in notebooks:
        out = out_dir / nb.name
        print(f"running {nb.name} ...", end=" ", flush=True)
        try:
            secs = execute(nb, out, runner["notebook"], args.verbose, args.timeout)
        except pm.PapermillExecutionError as e:
            print("FAILED", flush=True)
            print(failure_line(nb, out, e), file=sys.stderr)
            return 1
        except DeadKernelError as e:  # killed (out of memory, node trouble): a batch job may retry
            print("FAILED", flush=True)
            print(f"error: {nb.name}: the kernel died ({str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}); "
                  f"a rerun resumes from the last checkpoint (executed notebook: {out})", file=sys.stderr)
            return EXIT_DEAD_KERNEL
        except Exception as e:  # timeout, bad notebook ...
            print("FAILED", flush=True)
            msg = str(e).strip().splitlines()
            print(f"error: {nb.name} failed: {type(e).__name__}: {msg[0] if msg else ''} "
                  f"(executed notebook: {out})", file=sys.stderr)
            return 1
        print(f"done in {secs:.0f} s", flush=True)
        phases[nb.stem] = secs
        if nb.stem.startswith("02"):
            budget_line(run_dir)

    if args.no_report:
        return 0
    executed = out_dir / REPORT_NOTEBOOK
    ran_report = any(p.name == REPORT_NOTEBOOK for p in notebooks)
    stale = executed.is_file() and not ran_report and \
        executed.stat().st_mtime < max((out_dir / p.name).stat().st_mtime for p in notebooks)
    if not executed.is_file() or stale:
        print(f"note: no up-to-date executed {REPORT_NOTEBOOK} in {out_dir}; report not built "
              "(add 05 to --notebooks to build it)")
        return 0
    print("building the report ...", end=" ", flush=True)
    t0 = time.perf_counter()
    try:
        written = build_report(executed, run_dir, pdf=not args.no_pdf, show_code=args.show_code, title=args.title)
        phases["report"] = time.perf_counter() - t0
    except Exception as e:  # LaTeX missing or failing
        print("FAILED", flush=True)
        msg = str(e).strip().splitlines()
        hint = " (install the PDF toolchain: scripts/install_pdf_deps.sh, or pass --no-pdf)" if not args.no_pdf else ""
        print(f"error: report conversion failed: {type(e).__name__}: {msg[0] if msg else ''}{hint}", file=sys.stderr)
        return 3
    print("done", flush=True)
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
