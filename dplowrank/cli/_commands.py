"""The subcommands that read the user's files: release, pca, diagnose, budget, compress.

Each returns a dict (printed as JSON with ``--json``) and a text rendering. Every path is
checked, and every file read, *before* a budget is charged or noise is drawn; the budget
refuses an over-budget release before any noise (``BudgetExceededError``, exit code 4).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._inputs import InputError, check_directory, check_output, read_lines, read_matrix

if TYPE_CHECKING:
    from ..accounting import PrivacyBudget

__all__ = ["release", "pca", "diagnose", "budget", "compress"]


def _key(path: str | None) -> bytes | None:
    """The HMAC key of a ledger or release file, read from a key file (raw bytes)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"key file {str(p)!r} does not exist")
    return p.read_bytes()


def _budget(path: str | None, key_file: str | None):
    """The ledger at ``path`` (it must exist: create it with ``dplowrank budget create``)."""
    if path is None:
        return None
    from ..accounting import PrivacyBudget

    if not Path(path).is_file():
        raise InputError(f"budget ledger {path!r} does not exist; create it with `dplowrank budget create {path} "
                         "--epsilon E --delta D`")
    return PrivacyBudget.load(path, key=_key(key_file))


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _noise(seed: int | None) -> str:
    return ("seeded generator (reproducible: not for publication)" if seed is not None
            else "secure (AES-256-CTR keyed from os.urandom)")


def _ledger(ledger: PrivacyBudget) -> dict[str, object]:
    return {"ledger": str(ledger.path), "epsilon": ledger.epsilon, "delta": ledger.delta,
            "spent_epsilon": ledger.spent_epsilon(), "events": len(ledger.events)}


def _spent(ledger: PrivacyBudget | None) -> dict[str, object] | None:
    return None if ledger is None else _ledger(ledger)


def release(args) -> tuple[dict, str]:
    """Rows (or a Gram with its sensitivity) → a rank-k release file and its report."""
    from .. import release_rank_k

    out = check_output(args.out, force=args.force, what="release file")
    ledger = _budget(args.budget, args.key_file)
    key = _key(args.key_file)
    data = read_matrix(args.data, skip_header=args.skip_header)
    if args.gram:
        if args.sensitivity is None:
            raise InputError("--gram needs --sensitivity (the Gram's public L2 sensitivity)")
        if data.shape[0] != data.shape[1]:  # the row count of rows is private: only columns named
            raise InputError(f"--gram: {args.data!r} is not a square matrix (it has {data.shape[1]} columns "
                             "and another number of rows)")
        kw = dict(sensitivity=args.sensitivity)
    else:
        if args.row_norm is None:
            raise InputError("rows need --row-norm (a public bound on each row's norm; rows above it are clipped)")
        kw = dict(row_norm=args.row_norm)
    r = release_rank_k(torch.from_numpy(data), args.k, epsilon=args.epsilon, delta=args.delta,
                       mechanism=args.mechanism, neighbour=args.neighbour, generator=_generator(args.seed),
                       budget=ledger, **kw)
    if out is not None:
        _write_after_charge(lambda: r.save(out, key=key), out, ledger)
    rep = r.diagnose()
    result = {
        "command": "release", "k": r.k, "d": r.dim, "epsilon": r.epsilon, "delta": r.delta,
        "mechanism": r.mechanism, "neighbour": r.neighbour, "noise_scale": r.noise_scale,
        "randomness": r.randomness, "for_publication": r.for_publication,
        "eigenvalues": [float(v) for v in r.eigenvalues], "recommended_k": int(rep.recommended_k),
        "certified_k": int(rep.certified_k), "noise_edge": float(rep.noise_edge),
        "out": None if out is None else str(out), "budget": _spent(ledger),
    }
    text = [r.report(), "", f"noise: {_noise(args.seed)}"]
    if out is not None:
        text.append(f"wrote {out}")
    if ledger is not None:
        text.append(f"budget {ledger.path}: spent ε = {ledger.spent_epsilon():.4g} of {ledger.epsilon:g} "
                    f"(δ = {ledger.delta:g})")
    return result, "\n".join(text)


def pca(args) -> tuple[dict, str]:
    """Fit :class:`dplowrank.PrivatePCA` on the rows of a file; write components and the
    transformed rows (the transformed rows are the caller's own data, not a private output)."""
    from .. import PrivatePCA

    comps = check_output(args.components, force=args.force, what="components file", suffix=".npy")
    transformed = check_output(args.transformed, force=args.force, what="transformed-data file", suffix=".npy")
    ledger = _budget(args.budget, args.key_file)
    data = read_matrix(args.data, skip_header=args.skip_header)
    n_components = args.n_components
    if n_components not in ("auto", None):
        try:
            n_components = int(n_components)
        except ValueError:
            raise InputError(f"--n-components must be an integer or 'auto', got {args.n_components!r}") from None
    est = PrivatePCA(n_components, epsilon=args.epsilon, delta=args.delta, data_norm=args.data_norm,
                     centering=args.centering, random_state=args.seed, budget=ledger)
    y = est.fit_transform(data)
    for path, array in ((comps, est.components_), (transformed, y)):
        if path is not None:
            _write_after_charge(lambda p=path, a=array: _save_npy(p, a), path, ledger)
    result = {
        "command": "pca", "n_components": int(est.n_components_), "epsilon": args.epsilon, "delta": args.delta,
        "explained_variance": [float(v) for v in np.asarray(est.explained_variance_)],
        "randomness": "seeded" if args.seed is not None else "secure",
        "components": None if comps is None else str(comps),
        "transformed": None if transformed is None else str(transformed), "budget": _spent(ledger),
    }
    text = [f"PrivatePCA: {est.n_components_} components at (ε = {args.epsilon:g}, δ = {args.delta:g}); "
            f"noise: {_noise(args.seed)}",
            "explained variance: " + ", ".join(f"{v:.4g}" for v in result["explained_variance"])]
    text += [f"wrote {p}" for p in (comps, transformed) if p is not None]
    return result, "\n".join(text)


def diagnose(args) -> tuple[dict, str]:
    """A saved release → its report and a spectrum PNG (post-processing: costs nothing)."""
    from ..release import load_release

    plots = check_directory(args.plots, force=True, what="plot directory")
    p = Path(args.release)
    if not p.is_file():
        raise InputError(f"release file {str(p)!r} does not exist")
    r = load_release(p, key=_key(args.key_file))
    rep = r.diagnose(failure_probability=args.failure_probability)
    written = []
    if plots is not None:
        from ..diagnostics.plots import plot_spectrum

        plots.mkdir(exist_ok=True)
        written.append(str(plot_spectrum(rep, plots / "spectrum.png")))
    result = {
        "command": "diagnose", "release": str(p), "k": rep.k, "d": rep.d, "epsilon": rep.epsilon,
        "delta": rep.delta, "noise_edge": float(rep.noise_edge), "noise_bound": float(rep.noise_bound),
        "spectrum": [float(v) for v in rep.spectrum], "recommended_k": int(rep.recommended_k),
        "certified_k": int(rep.certified_k), "conditions": [str(c) for c in rep.conditions], "plots": written,
    }
    return result, rep.table() + "".join(f"\nwrote {w}" for w in written)


def budget(args) -> tuple[dict, str]:
    """create / show / spend / plan on a ledger file."""
    from ..accounting import PrivacyBudget

    key = _key(args.key_file)
    if args.action == "create":
        if Path(args.ledger).exists():
            raise InputError(f"budget ledger {args.ledger!r} exists; spend from it, or create another")
        check_output(args.ledger, force=False, what="budget ledger")
        b = PrivacyBudget(args.epsilon, args.delta, method=args.method, path=args.ledger, key=key)
        b.save()
        return ({"command": "budget create", **_ledger(b)},
                f"created {args.ledger}: ε = {b.epsilon:g}, δ = {b.delta:g} ({b.method})")
    b = _budget(args.ledger, args.key_file)
    if args.action == "show":
        rep = b.accountant.report(b.delta) if len(b.events) else {}
        out = {"command": "budget show", **_ledger(b), "method": b.method,
               "remaining_mu": b.remaining_mu(), "by_method": rep}
        lines = [f"{args.ledger}: spent ε = {b.spent_epsilon():.6g} of {b.epsilon:g} at δ = {b.delta:g} "
                 f"({len(b.events)} events, priced by {b.method})"]
        lines += [f"  {m}: ε = {v:.6g}" for m, v in rep.items()]
        return out, "\n".join(lines)
    if args.action == "spend":
        if (args.release is None) == (args.noise_multiplier is None):
            raise InputError("budget spend needs either --release FILE or --noise-multiplier (with "
                             "--sample-rate and --steps for DP-SGD)")
        if args.release is not None:
            from ..release import load_release

            if not Path(args.release).is_file():
                raise InputError(f"release file {args.release!r} does not exist")
            if key is None:  # a checksum is no tamper evidence: the recorded cost is taken as written
                print(f"dplowrank budget spend: warning: {args.release!r} is not authenticated (no --key-file); "
                      "its recorded cost is trusted as written", file=sys.stderr)
            event, count = load_release(args.release, key=key).privacy_event, 1
        else:
            event, count = _dpsgd_event(args.sample_rate, args.noise_multiplier), args.steps
        b.spend(event, count=count)
        return ({"command": "budget spend", **_ledger(b)},
                f"{args.ledger}: spent ε = {b.spent_epsilon():.6g} of {b.epsilon:g} at δ = {b.delta:g}")
    # plan: the smallest DP-SGD noise multiplier the remaining budget affords
    q, steps = args.sample_rate, args.steps
    if not (0.0 < q <= 1.0):
        raise InputError(f"--sample-rate must be in (0, 1], got {q!r}")
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps!r}")
    try:
        z = b.plan_dpsgd(q, steps)
    except ValueError as exc:
        raise InputError(f"{exc} ({args.ledger})") from None
    trial = b.accountant.copy()
    trial.add(_dpsgd_event(q, z), count=steps)
    total = trial.epsilon(b.delta, b.method)
    out = {"command": "budget plan", **_ledger(b), "sample_rate": q, "steps": steps, "noise_multiplier": z,
           "epsilon_after": total}
    return out, (f"DP-SGD with sample rate {q:g} for {steps} steps fits the rest of {args.ledger} with noise "
                 f"multiplier z ≥ {z:.6g} (total ε = {total:.6g} of {b.epsilon:g} at δ = {b.delta:g}; "
                 f"priced by {b.method}). Nothing was spent.")


def _save_npy(path: Path, array) -> None:
    """Write an .npy file at exactly ``path`` (``np.save`` on a name would add a suffix)."""
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(array))


def _write_after_charge(write, path: Path, ledger) -> None:
    """Run ``write`` once the work is done and paid for; a failure (the directory removed since
    the check, a full disk) says that the budget was charged, so nobody retries blindly."""
    try:
        write()
    except OSError as exc:
        charged = "its cost was charged to the ledger" if ledger is not None else "it was computed"
        raise InputError(f"the private result was made and {charged}, but writing {str(path)!r} failed "
                         f"({exc.strerror or type(exc).__name__}); it is lost") from None


def _dpsgd_event(q: float, z: float):
    from ..accounting import GaussianEvent, PoissonSampledEvent

    if not (0.0 < q <= 1.0):
        raise InputError(f"--sample-rate must be in (0, 1], got {q!r}")
    return PoissonSampledEvent(q, GaussianEvent(z))


def compress(args) -> tuple[dict, str]:
    """Private compression of a sentence-transformers model from a corpus file (one example
    per line), measured on public held-out text (standard-library docstrings)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = check_directory(args.out, force=args.force, what="model directory")
    ledger = _budget(args.budget, args.key_file)
    texts = read_lines(args.corpus)
    if not texts:
        raise InputError(f"corpus file {args.corpus!r} has no non-empty line")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InputError("compress needs sentence-transformers: pip install 'dplowrank[compress]'") from None
    from ..compress import (
        BERT,
        collect_statistics,
        compress_model,
        embedding_agreement,
        release_statistics,
        save_compressed,
    )
    from ..demo.datasets import stdlib_sentences
    from ..demo.minilm import encode, encoder, token_batches

    if args.model is None:
        from ..demo.minilm import load_minilm

        st = load_minilm()
    else:
        if not Path(args.model).is_dir():
            raise InputError(f"model directory {args.model!r} does not exist")
        st = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    enc, tok = encoder(st), st.tokenizer
    held = stdlib_sentences(args.n_heldout, seed=1)  # public text: the measurement costs nothing
    reference = encode(st, held)
    groups = BERT.groups(enc, args.scope)
    show = sys.stderr.isatty() and not args.json
    stats = collect_statistics(enc, token_batches(tok, texts, batch_size=32), groups, tokenizer=tok,
                               show_progress=show)
    private = release_statistics(stats, epsilon=args.epsilon, delta=args.delta, generator=_generator(args.seed),
                                 budget=ledger)
    storage = dict(ratio=args.ratio) if args.bits_per_parameter is None else \
        dict(bits_per_parameter=args.bits_per_parameter, bits=args.bits)
    res = compress_model(enc, groups, statistics=private, **storage)
    agree = embedding_agreement(reference, encode(st, held))
    saved = None
    if out_dir is not None:
        saved = str(save_compressed(enc, out_dir, metadata=res.metadata()))
    result = {"command": "compress", "scope": args.scope, "epsilon": args.epsilon, "delta": args.delta,
              "ratio": res.ratio, "bits_per_parameter": res.bits_per_parameter,
              "heldout_cosine": agree["cosine"], "heldout_neighbour_agreement": agree["neighbour_agreement"],
              "randomness": "seeded" if args.seed is not None else "secure", "saved": saved,
              "budget": _spent(ledger)}
    text = [res.summary() if hasattr(res, "summary") else repr(res),
            f"held-out (public standard-library text, {len(held)} sentences): cosine {agree['cosine']:.4f}, "
            f"nearest-neighbour agreement {agree['neighbour_agreement']:.3f}",
            f"privacy: one release of the corpus at (ε = {args.epsilon:g}, δ = {args.delta:g}); noise: "
            f"{_noise(args.seed)}"]
    if saved:
        text.append(f"saved the compressed layers to {saved}")
    return result, "\n".join(text)
