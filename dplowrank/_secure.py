"""Cryptographically secure Gaussian noise: an AES-256-CTR keystream turned into normals.

(This docstring describes the *host* algorithm. For CUDA targets the source draws with the
*portable* algorithm of :mod:`dplowrank._boxmuller` instead, on the device: ChaCha20 and an
exactly rounded Box–Muller with the same hardening; see ``SecureNormalSource``'s ``engine``.)

Why: torch's generators (Mersenne Twister on CPU, Philox on CUDA) are fast and good for
statistics but not cryptographic: their state can be recovered from enough outputs, and a
64-bit seed is a small secret. A release that will be published draws its noise here.

How (per numbered stream, so blocks of noise can run in parallel and reproducibly):

1. AES-256 in counter mode (NIST SP 800-38A, through the ``cryptography`` package, AES-NI
   where the CPU has it) with a 256-bit key from ``os.urandom``. The 128-bit initial
   counter block is (stream number, 64 bits) ‖ (block counter, 64 bits): distinct streams
   never share a counter block, and one stream would need 2⁶⁴ blocks to wrap.
2. Keystream words become uniforms. float64: each 64-bit word keeps 52 bits, a uniform on
   the grid {j·2⁻⁵² : 1 ≤ j ≤ 2⁵²} ⊂ (0, 1] (exact). float32 output: each 32-bit word w
   becomes (fl32(w) + ½)·2⁻³², a uniform on (0, 1] to float32 precision whose smallest value
   is 2⁻³³ (rounding w to 24 significant bits moves it by at most a relative 2⁻²⁴).
3. Box–Muller turns a (radius, angle) pair of uniforms into two independent normals:
   r = √(−2 ln u₁), θ = 2πu₂, Z = r cos θ and Z' = r sin θ. The smallest u₁ caps one draw:
   |Z| ≤ √(2·52 ln 2) = 8.49 in float64 (reached with probability 2⁻⁵²) and
   √(2·33 ln 2) = 6.76 in float32 (2⁻³³); the cap is the only departure from the normal
   distribution beyond rounding.
4. Hardening against floating-point attacks on the sampler (Holohan & Braghin 2021,
   "Secure Random Sampling in Differential Privacy", arXiv:2107.10138): every released
   normal is the normalised sum (Z₁ + … + Z_m)/√m of ``combine`` = m draws from m
   *different* Box–Muller pairs (never the cosine and sine of one pair, whose sum is a
   single rotated draw and smooths nothing; this holds for every n, including n = 1),
   which is exactly standard normal in distribution and smears the lattice structure that
   one floating-point draw leaves in its low-order bits. The 1/√m is folded into the
   radius: r/√m = √(−(2/m) ln u₁).

Precision: float64 noise is computed in float64 throughout. float32 noise is computed in
float32 (uniforms, logarithm, cosine, sum), so each draw carries float32 rounding (a few
2⁻²⁴ relative): the precision of the float32 matrix it is added to, where the release rounds
M + σZ to float32 anyway. The combining smooths the draws' lattice at that precision; a
release that needs the float64 guarantee uses ``dtype=float64``.

Speed: the work runs in chunks of :data:`_CHUNK` outputs whose buffers (keystream,
uniforms, Box–Muller, sum) stay in the core's L2 cache, and the output is written once.
The arithmetic is numpy on whole chunks (numpy never forks threads and releases the GIL
inside each call); only float64 cosine and sine, which numpy computes with scalar libm,
are torch's vectorised kernels on slices of :data:`_TRIG_SLICE` elements, below the size at
which torch forks an OpenMP team (forking one per small call on a thread-pool worker costs
more than the work, badly so on a busy machine). cryptography 50.0.2 (the version measured)
releases the GIL during the cipher call, so the noise blocks of
``dplowrank._parallel.run_blocks`` draw their keystreams in parallel; with a version that
holds it, the cipher calls serialise but still overlap the other blocks' arithmetic.

Provenance (DESIGN.md, invariant 5). Only a source whose key the library drew from
``os.urandom`` itself, with the hardening on (``combine`` ≥ 2), is *secure*. A source built
from a caller's key (``SecureNormalSource(key)``) or a seed (:meth:`SecureNormalSource.from_seed`)
is *seeded*: whoever knows the key can reproduce its noise, so releases made with it are marked
not for publication. A secure source never repeats its noise in another copy of itself:
copying or pickling it raises ``TypeError``, and a process forked from the owner rekeys every
secure source from ``os.urandom`` in the child (``os.register_at_fork``), so parent and child
draw independent noise from the same object.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import os
import threading
import warnings
import weakref

import numpy as np
import torch

try:  # a declared dependency, imported with the module so that no release pays for it
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    _HAVE_CIPHER = True
except ImportError:  # pragma: no cover - refused when a source is made
    _HAVE_CIPHER = False

__all__ = ["SecureNormalSource"]

#: Where the normals are computed: see :class:`SecureNormalSource`'s ``engine``.
_ENGINES = ("auto", "host", "portable")

_TWO_PI = 2.0 * math.pi
#: Outputs per cache-resident chunk, by output dtype: part of the output's definition (a
#: seeded source's numbers depend on it). Large enough that the GIL changes hands rarely
#: (every numpy call releases it), small enough that a chunk's buffers stay in L2.
_CHUNK = {torch.float32: 65536, torch.float64: 32768}
#: float64 cos/sin run in torch slices of this many elements (serial in torch below 2049).
_TRIG_SLICE = 2048
#: Stream numbers at or above this are reserved for :meth:`SecureNormalSource.solver_seed`.
_SOLVER_STREAMS = 2**63
_F64_ONE = np.uint64(0x3FF0000000000000)


#: Provenance: every live source whose key the library drew from the OS, mapped to that key
#: (the very bytes object). A source is secure only while it is in here with its own key, so a
#: clone made by hand, a subclass or a key swapped in afterwards is not; forked children rekey.
_OS_KEYED: weakref.WeakKeyDictionary[SecureNormalSource, bytes] = weakref.WeakKeyDictionary()
_OS_KEYED_LOCK = threading.Lock()


def _rekey_after_fork() -> None:
    """In a forked child: fresh OS keys and counters for every secure source it inherited,
    so that it never draws the noise its parent draws."""
    global _OS_KEYED_LOCK
    _OS_KEYED_LOCK = threading.Lock()  # the parent's lock may have been held by another thread
    for src in list(_OS_KEYED.keys()):
        src._key = os.urandom(32)
        _OS_KEYED[src] = src._key
        src._next, src._next_solver = 0, _SOLVER_STREAMS
        src._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rekey_after_fork)


class SecureNormalSource:
    """Standard normal draws from an AES-256-CTR keystream, in independent numbered streams.

    Parameters
    ----------
    key : bytes, optional
        A 32-byte AES-256 key. Omit it for noise that is fit to publish: the library then
        draws the key from ``os.urandom``. A key given here makes the source *seeded*
        (reproducible by whoever knows the key; releases made with it are marked not for
        publication).
    combine : int, default 2
        m: each output is (Z₁ + … + Z_m)/√m over m different Box–Muller pairs
        (Holohan & Braghin 2021). An OS-keyed source needs m ≥ 2 (the hardening is part of
        what "secure" means); a seeded one may use m = 1.
    engine : {"auto", "host", "portable"}, default "auto"
        Which algorithm turns the key into normals. ``"host"``: AES-256-CTR and the host's
        Box–Muller (this module's docstring), computed on the CPU and copied to the target
        device. ``"portable"``: ChaCha20 and the exactly-rounded Box–Muller of
        :mod:`dplowrank._boxmuller`, computed on a CUDA device by Triton kernels where the
        noise is needed (no host round trip), elsewhere by its numpy implementation, with
        the same bits on both. ``"auto"``: ``"portable"`` for CUDA targets, ``"host"`` for
        every other. The hardening, the caps and the provenance are the same for all three;
        one key gives the same noise on every device with ``"host"`` or ``"portable"``.

    Attributes
    ----------
    seeded : bool
        ``not secure``: the key came from the caller (``key=`` or :meth:`from_seed`).
    secure : bool
        The key was drawn by the library from the OS for this very object, with the hardening
        on (read-only; a subclass, a hand-made clone or a key replaced afterwards is seeded).
    combine : int
        Read-only.
    engine : str
        Read-only.

    Raises
    ------
    TypeError
        On :func:`copy.copy`, :func:`copy.deepcopy` or pickling of a secure source (a copy
        would repeat its noise).
    """

    __slots__ = ("_key", "_combine", "_engine", "_next", "_next_solver", "_lock", "__weakref__")

    def __init__(self, key: bytes | None = None, *, combine: int = 2, engine: str = "auto",
                 _seeded: bool = False) -> None:
        if not _HAVE_CIPHER:  # pragma: no cover - a declared dependency
            raise ImportError("secure noise needs the 'cryptography' package")
        if isinstance(combine, bool) or not isinstance(combine, int) or combine < 1:
            raise ValueError(f"combine must be a positive integer, got {combine!r}")
        if engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
        seeded = key is not None
        if key is None:
            if combine < 2:
                raise ValueError(
                    "combine=1 switches off the floating-point hardening; a source keyed from the OS "
                    "(fit to publish) needs combine >= 2"
                )
            key = os.urandom(32)
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ValueError(f"key must be 32 bytes, got {type(key).__name__} of length {len(key) if hasattr(key, '__len__') else '?'}")
        self._key = bytes(key)
        self._combine = combine
        self._engine = engine
        self._next = 0
        self._next_solver = _SOLVER_STREAMS
        self._lock = threading.Lock()
        if not (seeded or _seeded):
            with _OS_KEYED_LOCK:
                _OS_KEYED[self] = self._key

    @property
    def combine(self) -> int:
        return self._combine

    @property
    def engine(self) -> str:
        return self._engine

    @property
    def secure(self) -> bool:
        """Whether the noise is fit to publish: key from ``os.urandom`` drawn for this object by
        the library, hardening on, and the class itself (not a subclass)."""
        return (type(self) is SecureNormalSource and _OS_KEYED.get(self) is self._key
                and self._combine >= 2)

    @property
    def seeded(self) -> bool:
        """``not secure``: reproducible by whoever knows the key (not for publication)."""
        return not self.secure

    def __copy__(self):
        return self._copy()

    def __deepcopy__(self, memo):
        return self._copy()

    def __reduce_ex__(self, protocol):
        self._refuse_copy()
        with self._lock:
            state = (self._key, self._combine, self._next, self._next_solver, self._engine)
        return (_restore_seeded, state)

    def _refuse_copy(self) -> None:
        if self.secure:
            raise TypeError(
                "a secure SecureNormalSource cannot be copied or pickled: the copy would repeat its "
                "noise; create a new SecureNormalSource() where the noise is needed"
            )

    def _copy(self):
        self._refuse_copy()
        with self._lock:
            return _restore_seeded(self._key, self._combine, self._next, self._next_solver, self._engine)

    @classmethod
    def from_seed(cls, seed: int | bytes | str, *, combine: int = 2, engine: str = "auto") -> SecureNormalSource:
        """A reproducible source whose key is SHA-256(seed): for tests and debugging only."""
        material = seed if isinstance(seed, bytes) else str(seed).encode()
        return cls(hashlib.sha256(b"dplowrank-seeded-noise" + material).digest(), combine=combine, engine=engine,
                   _seeded=True)

    def new_streams(self, count: int) -> list[int]:
        """Reserve ``count`` fresh stream numbers (thread-safe; never reused by this source)."""
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        count = int(count)
        with self._lock:
            start = self._next
            if start + count > _SOLVER_STREAMS:  # pragma: no cover - 2⁶³ streams
                raise RuntimeError("this SecureNormalSource has used up its noise streams")
            self._next += count
        return list(range(start, start + count))

    def solver_seed(self) -> int:
        """A 64-bit seed for non-private randomness (the eigensolver's start) from this key.

        Each call takes the next stream of a range reserved for this purpose (disjoint from
        the noise streams), so a seeded source makes a whole release reproducible and two
        calls give different seeds.
        """
        with self._lock:
            stream = self._next_solver
            self._next_solver += 1
        word = np.frombuffer(self._keystream(self._encryptor(stream), 8, bytearray(24)), dtype="<u8", count=1)
        return int(word[0])

    # ---- the keystream -----------------------------------------------------------------

    def _encryptor(self, stream: int):
        if not 0 <= int(stream) < 2**64:
            raise ValueError(f"stream must be in [0, 2**64), got {stream}")
        counter = int(stream).to_bytes(8, "big") + bytes(8)  # (stream ‖ block counter)
        return Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()

    @staticmethod
    def _keystream(enc, nbytes: int, buf):
        """The next ``nbytes`` of ``enc``'s keystream into ``buf`` (a writable buffer of at
        least nbytes + 15 bytes, as ``update_into`` requires)."""
        written = enc.update_into(memoryview(_zeros(nbytes))[:nbytes], buf)
        if written != nbytes:  # pragma: no cover - a CTR cipher returns what it is given
            raise RuntimeError(f"the cipher returned {written} of {nbytes} keystream bytes")
        return buf

    # ---- normals -----------------------------------------------------------------------

    def algorithm(self, device: torch.device | str = "cpu") -> str:
        """``"host"`` or ``"portable"``: the algorithm this source draws with for ``device``
        (see ``engine``)."""
        if self._engine == "auto":
            return auto_algorithm(torch.device(device))
        return self._engine

    def draws_on_device(self, device: torch.device | str, algorithm: str | None = None) -> bool:
        """Whether noise for ``device`` is computed there (a CUDA device, the portable
        algorithm, and Triton installed) rather than on the host. ``algorithm``: as for
        :meth:`normals`."""
        dev = torch.device(device)
        algo = self.algorithm(dev) if algorithm is None else algorithm
        return dev.type == "cuda" and algo == "portable" and _have_triton() and not _DEVICE_FAILED

    def normals(
        self, n: int, *, stream: int, dtype: torch.dtype = torch.float64, out: torch.Tensor | None = None,
        device: torch.device | str | None = None, algorithm: str | None = None,
    ) -> torch.Tensor:
        """``n`` standard normals from stream number ``stream``, Tensor of shape (n,).

        The same (key, stream, n, combine, dtype, algorithm) always gives the same numbers;
        distinct streams are independent keystreams. float32 output is computed in float32,
        any other dtype in float64 and cast. Each output combines draws from ``combine``
        different Box–Muller pairs, even for n = 1. The Tensor is on ``out``'s device, else
        on ``device`` (default the CPU), which also chooses the algorithm
        (:meth:`algorithm`). ``out``: optional contiguous Tensor of the working dtype
        (float32 for float32, else float64) with at least ``n`` elements: the draws fill its
        first ``n`` and that view is returned (a reused buffer spares the page faults of
        fresh memory). ``algorithm``: ``"host"`` or ``"portable"`` to override the engine's
        choice (the ranks of a sharded release on different device kinds agree on one).
        """
        if algorithm is not None and algorithm not in _ENGINES[1:]:
            raise ValueError(f"algorithm must be 'host' or 'portable', got {algorithm!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
        if not 0 <= int(stream) < 2**64:
            raise ValueError(f"stream must be in [0, 2**64), got {stream}")
        single = dtype == torch.float32
        work = torch.float32 if single else torch.float64
        target = out.device if out is not None else torch.device("cpu" if device is None else device)
        algo = self.algorithm(target) if algorithm is None else algorithm
        if algo == "portable":
            from ._boxmuller import blocks_needed

            blocks_needed(n, self._combine, work)  # a draw longer than a stream: refused up front
        if out is None:
            out = torch.empty(n, dtype=work, device=target)
        else:
            if out.dtype != work or not out.is_contiguous() or out.numel() < n:
                raise ValueError(
                    f"out must be a contiguous {work} tensor of at least {n} elements, got "
                    f"{out.dtype} of {out.numel()} on {out.device}"
                )
            out = out.view(-1)[:n]
        if n > 0:
            self._fill(out, n, int(stream), work, algo)
        return out if dtype == work else out.to(dtype)

    def _fill(self, out: torch.Tensor, n: int, stream: int, work: torch.dtype, algo: str) -> None:
        """Draw ``n`` normals of ``stream`` into ``out`` (shape (n,), the working dtype) with
        algorithm ``algo``."""
        if algo == "portable":
            from . import _boxmuller

            key = _boxmuller.subkey(self._key)
            if self.draws_on_device(out.device, algo):
                try:
                    _boxmuller.normals_device(key, stream, n, self._combine, work, out)
                    return
                except ValueError:  # a bad request, not a broken device path
                    raise
                except Exception as exc:  # e.g. no C compiler for Triton's launcher: the same bits on the host
                    failure = type(exc).__name__
                _device_failed(failure)  # outside the handler: no exception chained to the warning
            if out.device.type == "cpu":
                _boxmuller.normals_cpu(key, stream, n, self._combine, work, out=out.numpy())
            else:
                out.copy_(torch.from_numpy(_boxmuller.normals_cpu(key, stream, n, self._combine, work)))
            return
        if out.device.type != "cpu":  # drawn on the host and copied
            out.copy_(self.normals(n, stream=stream, dtype=work, algorithm="host"))
            return
        enc = self._encryptor(stream)
        dst = out.numpy()
        size = _CHUNK[work]
        kernel = _Chunk(min(n, size), self._combine, work == torch.float32)
        for c0 in range(0, n, size):
            c = min(size, n - c0)
            if c != kernel.c:  # the shorter last chunk
                kernel = _Chunk(c, self._combine, work == torch.float32)
            self._keystream(enc, kernel.nbytes, kernel.raw)
            kernel.convert(dst[c0 : c0 + c])

    def __repr__(self) -> str:
        return f"SecureNormalSource(combine={self.combine}, engine={self._engine!r}, seeded={self.seeded})"


#: Set when the Triton kernels failed once in this process; the portable algorithm then runs on
#: the host (numpy, the same bits), so a release whose budget is charged still gets its noise.
_DEVICE_FAILED = False


def _device_failed(failure: str) -> None:
    """Switch the device path off for this process and say so (``failure``: the exception's
    type name only)."""
    global _DEVICE_FAILED
    _DEVICE_FAILED = True
    warnings.warn(f"the device noise kernels failed ({failure}); drawing the same noise on the host instead",
                  RuntimeWarning, stacklevel=4)


def auto_algorithm(device: torch.device) -> str:
    """The algorithm engine ``"auto"`` draws with for ``device``."""
    return "portable" if device.type == "cuda" else "host"


@functools.cache
def _have_triton() -> bool:
    """Whether the Triton kernels can run (Triton imports; CUDA builds of torch bundle it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def broadcast_source(source: SecureNormalSource | None, src: int, group=None) -> SecureNormalSource:
    """The same noise source on every rank of a torch.distributed group (collective).

    For a sharded release (:func:`dplowrank.release_rank_k_sharded`), whose ranks draw their
    rows of one noise matrix from numbered keystreams of one key. On rank ``src``, ``source``
    is ``None`` — a fresh :class:`SecureNormalSource` is keyed from ``os.urandom`` here and
    its key sent to the other ranks, where the source is secure too — or a seeded source,
    whose state is sent (seeded everywhere). The other ranks pass ``None``. A secure source
    made elsewhere is refused (a copy would repeat noise it may already have drawn), so the
    only key that is ever "secure" on a receiving rank is one this function drew. The key
    travels over the group's transport, which the job must trust as it trusts it with the raw
    statistics (docs/distributed.md).
    """
    import torch.distributed as dist

    from ._distributed import collective

    rank = dist.get_rank(group)
    state: list = [None]
    if rank == src:
        if source is None:
            source = SecureNormalSource()
        elif source.secure:
            raise TypeError("a secure SecureNormalSource cannot be shared; pass None for secure noise")
        with source._lock:
            state[0] = ("secure" if source.secure else "seeded", source._key, source._combine, source._next,
                        source._next_solver, source._engine)
    with collective("sharing the noise source"):
        dist.broadcast_object_list(state, src=src, group=group)
    if rank == src:
        assert source is not None
        return source
    kind, key, combine, next_stream, next_solver, engine = state[0]
    out = _restore_seeded(bytes(key), combine, next_stream, next_solver, engine)
    if kind == "secure":
        with _OS_KEYED_LOCK:
            _OS_KEYED[out] = out._key
    return out


def _restore_seeded(key: bytes, combine: int, next_stream: int, next_solver: int,
                    engine: str = "auto") -> SecureNormalSource:
    """A seeded source in a given state (copies and unpickling of seeded sources)."""
    src = SecureNormalSource(key, combine=combine, engine=engine, _seeded=True)
    src._next, src._next_solver = next_stream, next_solver
    return src


_ZEROS = bytes(0)
_ZEROS_LOCK = threading.Lock()


def _zeros(nbytes: int) -> bytes:
    """A shared read-only buffer of at least ``nbytes`` zero bytes (the plaintext).

    Grown under a lock and returned from the same read, so that no thread (free-threaded
    Python included) gets a buffer shorter than it asked for."""
    global _ZEROS
    buf = _ZEROS
    if len(buf) < nbytes:
        with _ZEROS_LOCK:
            if len(_ZEROS) < nbytes:
                _ZEROS = bytes(max(nbytes, 2 * len(_ZEROS)))
            buf = _ZEROS
    return buf


def _layout(c: int, m: int) -> tuple[int, int]:
    """(rows, cols) of the Box–Muller pairs behind ``c`` outputs combining ``m`` draws.

    m = 1: one row of ⌈c/2⌉ pairs, cosines then sines. m ≥ 2: ⌈m/2⌉ rows of max(c, 2)
    pairs; output i takes the cosines of pairs (j, i), j < ⌈m/2⌉, and the sines of pairs
    (j, (i + 1) mod cols), j < ⌊m/2⌋: m different pairs, because cols ≥ 2.
    """
    if m == 1:
        return 1, (c + 1) // 2
    return (m + 1) // 2, max(c, 2)


class _Chunk:
    """Buffers for turning the keystream behind ``c`` outputs into normals (reused per chunk).

    All arithmetic is numpy except the float64 cosine and sine (torch on slices of
    :data:`_TRIG_SLICE` elements); see the module docstring. Cosines and sines share one
    buffer so that one call scales both by the radius (each numpy call is a GIL hand-off
    between the noise blocks' threads: the fewer, the better on a busy machine).
    """

    def __init__(self, c: int, m: int, single: bool) -> None:
        rows, cols = _layout(c, m)
        self.c, self.m, self.rows, self.cols, self.single = c, m, rows, cols, single
        word = np.uint32 if single else np.uint64
        self.nbytes = 2 * rows * cols * np.dtype(word).itemsize
        self.raw = np.empty(self.nbytes + 16, dtype=np.uint8)  # the cipher wants 15 spare bytes
        self.words = self.raw[: self.nbytes].view(word)  # shape: (2·rows·cols,)
        # shape: (2, rows, cols): radius uniforms (then r/√m), angle uniforms (then θ)
        f = np.empty(2 * rows * cols, dtype=np.float32) if single else self.words.view(np.float64)
        self.f = f.reshape(2, rows, cols)
        self.trig = np.empty((2, rows, cols), dtype=f.dtype)  # cos θ, sin θ (then times r/√m)
        if single:
            self._scale = np.array([2.0**-32, _TWO_PI * 2.0**-32], dtype=np.float32).reshape(2, 1, 1)
        else:
            th = torch.from_numpy(self.f[1].reshape(-1))
            cos, sin = (torch.from_numpy(t.reshape(-1)) for t in self.trig)
            self._slices = list(zip(th.split(_TRIG_SLICE), cos.split(_TRIG_SLICE), sin.split(_TRIG_SLICE)))

    def convert(self, out: np.ndarray) -> None:
        """Fill ``out`` (shape (c,)) from the keystream words in ``self.raw`` (overwritten)."""
        c, m, cols = self.c, self.m, self.cols
        u, theta, trig = self.f[0], self.f[1], self.trig
        if self.single:
            np.copyto(self.f.reshape(-1), self.words, casting="unsafe")  # rounds w to 24 bits
            np.multiply(self.f, self._scale, out=self.f)  # u = fl(w)·2⁻³², θ = 2π·fl(w)·2⁻³²
            np.add(u, 2.0**-33, out=u)  # (0, 1], smallest 2⁻³³
            np.cos(theta, out=trig[0])
            np.sin(theta, out=trig[1])
        else:
            w = self.words
            # 52 random bits as the mantissa under exponent 0: v ∈ [1, 2) on the 2⁻⁵² grid
            np.right_shift(w, np.uint64(12), out=w)
            np.bitwise_or(w, _F64_ONE, out=w)
            np.subtract(u, 1.0 - 2.0**-52, out=u)  # exact: u = j·2⁻⁵², 1 ≤ j ≤ 2⁵², ln u finite
            np.multiply(theta, _TWO_PI, out=theta)  # 2πv ∈ [2π, 4π): θ = 2π(v − 1) up to a period
            for th, co, si in self._slices:
                torch.cos(th, out=co)
                torch.sin(th, out=si)
        np.log(u, out=u)
        np.multiply(u, -2.0 / m, out=u)
        np.sqrt(u, out=u)  # r/√m, shape: (rows, cols)
        np.multiply(trig, u, out=trig)  # the draws r·cos θ/√m and r·sin θ/√m
        if m == 1:
            out[:cols] = trig[0, 0]
            out[cols:] = trig[1, 0, : c - cols]
            return
        half = m // 2
        a = trig[0, 0] if self.rows == 1 else trig[0].sum(axis=0)
        b = trig[1, 0] if half == 1 else trig[1, :half].sum(axis=0)
        # output i = a[i] + b[(i + 1) mod cols]: the last output wraps around
        np.add(a[: c - 1], b[1:c], out=out[: c - 1])
        out[c - 1] = a[c - 1] + b[c % cols]


def _normals_from_words(words: np.ndarray, c: int, m: int, out: torch.Tensor) -> None:
    """Test seam: the normals behind given keystream words (uint32: float32, else float64).

    ``words`` has shape (2·rows·cols,) (see :func:`_layout`): first the radius uniforms,
    then the angles; ``out`` is a Tensor of shape (c,) of the matching dtype.
    """
    kernel = _Chunk(c, m, words.dtype.itemsize == 4)
    kernel.words[:] = words
    kernel.convert(out.numpy())
