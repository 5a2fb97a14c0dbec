"""The ``dplowrank`` command line.

Subcommands that read your files: ``release`` (rows or a Gram → a rank-k release file and its
report), ``pca`` (PrivatePCA → components and transformed rows), ``diagnose`` (release file →
report and spectrum PNG), ``budget`` (create / show / spend / plan a ledger), ``compress``
(a sentence-transformers model and a corpus file → compressed layers and their table). Demos
on bundled data: ``demo``, ``spectrum``, and ``compress`` without ``--corpus``.

Why argparse and not typer: it is in the standard library (nothing to install for a command
line of a library whose users mostly call Python), and it gives the control this needs over
exit codes and one-line errors without a rich-traceback layer to switch off.

Exit codes: 0 success; 1 unexpected error; 2 usage (bad or missing arguments); 3 bad input (a
file that cannot be read or written, a value the library refuses); 4 budget exceeded (nothing
was charged and no noise was drawn). Every output path and input file is checked before any
budget is charged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from ._inputs import InputError

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INPUT", "EXIT_BUDGET"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INPUT, EXIT_BUDGET = 0, 1, 2, 3, 4

_EPILOG = """examples:
  dplowrank release rows.csv --k 8 --epsilon 1 --delta 1e-6 --row-norm 8 --out release.npz
  dplowrank release gram.npy --gram --sensitivity 64 --k 4 --epsilon 1 --delta 1e-6
  dplowrank pca digits.npy --n-components auto --epsilon 1 --delta 1e-5 --data-norm 8 \\
      --components components.npy --transformed projected.npy
  dplowrank diagnose release.npz --plots plots/
  dplowrank budget create ledger.json --epsilon 4 --delta 1e-5
  dplowrank release rows.csv --k 8 --epsilon 1 --delta 1e-6 --row-norm 8 --budget ledger.json
  dplowrank budget plan ledger.json --sample-rate 0.01 --steps 1000
  dplowrank compress --corpus notes.txt --epsilon 4 --out minilm-compressed/
  dplowrank --json budget show ledger.json

exit codes: 0 ok, 1 unexpected error, 2 usage, 3 bad input, 4 budget exceeded (nothing spent)
"""


def _parser() -> argparse.ArgumentParser:
    top, common = (argparse.ArgumentParser(add_help=False) for _ in range(2))
    for p, default in ((top, False), (common, argparse.SUPPRESS)):  # before or after the command
        p.add_argument("--json", action="store_true", default=default, help="print one JSON object (for scripts)")
        p.add_argument("--debug", action="store_true", default=default,
                       help="show the traceback of an unexpected error")
    parser = argparse.ArgumentParser(prog="dplowrank", parents=[top], epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Differentially private low-rank linear algebra.")
    parser.add_argument("--version", action="version", version=f"dplowrank {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, epilog=None):
        return sub.add_parser(name, help=help_, parents=[common], epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter, description=help_)

    def privacy(p, eps_default=None):
        p.add_argument("--epsilon", type=float, required=eps_default is None, default=eps_default, help="ε of this release")
        p.add_argument("--delta", type=float, default=1e-6, help="δ of this release (default 1e-6)")
        p.add_argument("--budget", metavar="LEDGER", help="charge this ledger (refused before any noise if over)")
        p.add_argument("--key-file", metavar="FILE", help="HMAC key (raw bytes) of the ledger / release files")
        p.add_argument("--seed", type=int, help="seed the noise: reproducible, NOT for publication")
        p.add_argument("--force", action="store_true", help="replace existing output files")

    p = add("release", "rows (CSV / NPY / Parquet) or a Gram → a private rank-k release and its report",
            "example: dplowrank release rows.csv --k 8 --epsilon 1 --row-norm 8 --out release.npz")
    p.add_argument("data", help="rows, one per line (.csv, .txt, .npy, .parquet), or a d×d Gram with --gram")
    p.add_argument("--k", type=int, required=True, help="rank of the release")
    p.add_argument("--row-norm", type=float, help="public bound C on each row's norm (rows above are clipped)")
    p.add_argument("--gram", action="store_true", help="DATA is a Gram matrix; give its --sensitivity")
    p.add_argument("--sensitivity", type=float, help="public L2 sensitivity of the Gram (with --gram)")
    p.add_argument("--mechanism", choices=["gaussian", "complex"], default="gaussian")
    p.add_argument("--neighbour", choices=["add_remove", "replace"], default=None)
    p.add_argument("--skip-header", action="store_true", help="the CSV's first line is a header")
    p.add_argument("--out", help="write the release here (.npz)")
    privacy(p)

    p = add("pca", "PrivatePCA on rows of a file → components and the transformed rows",
            "example: dplowrank pca x.npy --n-components 8 --epsilon 1 --data-norm 8 --components c.npy")
    p.add_argument("data", help="rows (.csv, .txt, .npy, .parquet)")
    p.add_argument("--n-components", default="auto", help="an integer, or 'auto' (the signal rank)")
    p.add_argument("--data-norm", type=float, required=True, help="public bound on each row's norm")
    p.add_argument("--centering", choices=["private", "none"], default="private")
    p.add_argument("--skip-header", action="store_true")
    p.add_argument("--components", help="write the (k, d) components here (.npy)")
    p.add_argument("--transformed", help="write the (n, k) transformed rows here (.npy): your data, not a release")
    privacy(p)

    p = add("diagnose", "a release file → its report (and a spectrum PNG): post-processing, costs nothing",
            "example: dplowrank diagnose release.npz --plots plots/")
    p.add_argument("release", help="a file written by `dplowrank release --out` or LowRankRelease.save")
    p.add_argument("--plots", metavar="DIR", help="write spectrum.png into this directory")
    p.add_argument("--failure-probability", type=float, default=0.05)
    p.add_argument("--key-file", metavar="FILE")

    p = add("budget", "a privacy ledger: create, show, spend, or plan DP-SGD's noise multiplier",
            "examples:\n  dplowrank budget create ledger.json --epsilon 4 --delta 1e-5\n"
            "  dplowrank budget plan ledger.json --sample-rate 0.01 --steps 1000")
    p.add_argument("action", choices=["create", "show", "spend", "plan"])
    p.add_argument("ledger", help="the ledger file (JSON)")
    p.add_argument("--epsilon", type=float, help="total ε (create)")
    p.add_argument("--delta", type=float, help="total δ (create)")
    p.add_argument("--method", choices=["auto", "gdp", "zcdp", "rdp", "pld"], default="auto",
                   help="pricing (create); auto: the tightest valid (PLD for DP-SGD when dp_accounting is installed)")
    p.add_argument("--release", help="spend: the event of this release file")
    p.add_argument("--noise-multiplier", type=float, help="spend: DP-SGD's z")
    p.add_argument("--sample-rate", type=float, default=None, help="DP-SGD's Poisson sampling rate q")
    p.add_argument("--steps", type=int, default=None, help="DP-SGD steps")
    p.add_argument("--key-file", metavar="FILE")

    p = add("compress", "compress a sentence-transformers model privately from a corpus file (one example "
            "per line); without --corpus: the MiniLM demo on standard-library text",
            "example: dplowrank compress --corpus notes.txt --epsilon 4 --out minilm-compressed/")
    p.add_argument("--corpus", help="the private corpus, UTF-8, one example per line")
    p.add_argument("--model", help="a sentence-transformers model directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--out", "--save", dest="out", help="directory for the compressed layers (safetensors)")
    p.add_argument("--ratio", type=float, default=0.6, help="parameter ratio of the compressed layers")
    p.add_argument("--scope", choices=["ffn", "attention", "all"], default="ffn")
    p.add_argument("--bits-per-parameter", type=float, default=None,
                   help="store quantised (LPLR) factors within this many bits per dense parameter (< 32)")
    p.add_argument("--bits", type=int, nargs="+", default=None, metavar="B",
                   help="bits of the left and right factor codes (one value for both; default 8)")
    p.add_argument("--n-heldout", type=int, default=300, help="public held-out sentences for the table")
    p.add_argument("--n-train", type=int, default=8000, help="demo only: training sentences")
    p.add_argument("--no-prior", action="store_true", help="demo only: release without the public prior")
    p.add_argument("--reference", action="store_true", help="demo only: add the NOT private reference row")
    privacy(p, eps_default=4.0)

    p = add("demo", "private rank-k releases of the digits Gram at several ε (bundled data)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0, 8.0])
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--repeats", type=int, default=10)

    p = add("spectrum", "diagnostics of one private release of the digits Gram, with a PNG (bundled data)")
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--mechanism", choices=["gaussian", "complex"], default="gaussian")
    p.add_argument("--out", default="spectrum.png")
    p.add_argument("--seed", type=int, default=None, help="seed a generator (reproducible, not for publication)")
    return parser


def _version() -> str:
    """The installed distribution's version (setuptools reads it from ``dplowrank.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dplowrank")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _run(args) -> tuple[dict | None, str]:
    from . import _commands, _demos

    if args.command == "demo":
        return None, _demos.demo(args.k, args.epsilons, args.delta, args.repeats)
    if args.command == "spectrum":
        from ._inputs import check_output

        check_output(args.out, force=True, what="plot")
        return None, _demos.spectrum(args.k, args.epsilon, args.delta, args.out, args.seed, args.mechanism)
    if args.command == "compress" and args.corpus is None:
        from ._inputs import check_directory

        check_directory(args.out, force=args.force, what="model directory")
        return None, _demos.compress(args.epsilon, args.ratio, args.scope, args.delta, args.n_train, args.n_heldout,
                                     args.seed, not args.no_prior, args.out, args.reference, args.bits,
                                     args.bits_per_parameter)
    if args.command == "budget":
        _check_budget_args(args)
    if args.command == "compress" and args.bits:
        args.bits = (args.bits[0], args.bits[-1])
    return getattr(_commands, args.command)(args)


def _check_budget_args(args) -> None:
    need = {"create": ("epsilon", "delta"), "plan": ("sample_rate", "steps")}.get(args.action, ())
    missing = [f"--{n.replace('_', '-')}" for n in need if getattr(args, n) is None]
    if args.action == "spend" and args.noise_multiplier is not None:
        missing += [f"--{n.replace('_', '-')}" for n in ("sample_rate", "steps") if getattr(args, n) is None]
    if missing:
        raise _Usage(f"budget {args.action} needs {' and '.join(missing)}")


class _Usage(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return int(exc.code or 0)
    from ..accounting import BudgetExceededError

    name = f"dplowrank {args.command}"
    try:
        result, text = _run(args)
    except _Usage as exc:
        parser.print_usage(sys.stderr)
        return _fail(args, name, str(exc), EXIT_USAGE)
    except BudgetExceededError as exc:
        return _fail(args, name, f"budget exceeded, nothing spent: {exc}", EXIT_BUDGET)
    except (InputError, ValueError, TypeError, OSError, ImportError) as exc:
        return _fail(args, name, str(exc), EXIT_INPUT)
    except KeyboardInterrupt:
        return _fail(args, name, "interrupted", EXIT_ERROR)
    except Exception as exc:  # one line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        return _fail(args, name, f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                     EXIT_ERROR)
    try:
        if args.json:
            print(json.dumps(result if result is not None else {"command": args.command, "text": text}, default=str))
        else:
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: the work is done (and paid for); nothing to add
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return EXIT_OK


def _fail(args, name: str, message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    if getattr(args, "json", False):
        print(json.dumps({"command": args.command, "error": first, "exit_code": code}))
    print(f"{name}: error: {first}", file=sys.stderr)
    return code
