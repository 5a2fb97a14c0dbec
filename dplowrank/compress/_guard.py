"""Isolation by construction: every forward pass of a collection starts from the same model state.

A forward pass that keeps state (a range observer, a recurrent state, a lazily filled cache, a
counter in a closure or a global, a random generator) would carry one example into the next
example's contribution, and the clipping bound would no longer be the sensitivity: an observer
kept as a plain float moved a released Gram by 45.8·C between neighbours. Checking the state
once at the end of a collection is not enough (state that is back at its start value by then,
or that the check does not look at, passed with 33–39·C), so :class:`StateGuard` snapshots
what the model's code can reach from Python and *puts it back before every forward pass*: each
example meets the model exactly as it was before the collection, whatever the previous
examples did to it.

What the snapshot covers (the *reachable state*):

- every module's ``__dict__`` (public and underscore attributes, hooks, the training flag),
  dplowrank's own modules included, and the classes of the modules (class attributes);
- the code the model runs, by name: starting from ``forward`` (and the other entry points in
  ``_ENTRY_POINTS``), ``forward=`` / ``loss=`` and the hooks, every method of those classes
  whose name the walked code uses (staticmethods, classmethods, properties and decorated
  functions unwrapped); their closures, default arguments and attributes; of their globals,
  of the modules they call into and of the modules they import inside themselves, *the names
  their code uses*, recursively (the user's own modules outside installed packages join the
  model's packages); torch's global module hooks; lru_cache wrappers (emptied when a pass
  adds an entry; entries cached before the collection are not reachable);
- random generators: torch's global one (and CUDA's once initialised), Python's ``random``,
  numpy's legacy global one, and every ``torch.Generator``, ``random.Random``,
  ``numpy.random.Generator`` / ``RandomState`` found in the state;
- inside all that: dicts (keys too, ``default_factory``, an OrderedDict's order), lists, sets,
  deques, tuples, bytearrays, ``array.array``, weak dictionaries, closure cells,
  ``SimpleNamespace`` and ``functools.partial`` objects, numpy arrays and tensors (compared bit
  for bit; parameters and buffers by version counter), and objects of the packages that define
  the model (``__dict__``, ``__slots__`` and their classes), to any depth. A generator or an
  ``itertools.count`` that a pass advances cannot be put back: the collection is refused.

Cost: a full copy of every parameter and buffer (twice the model's memory), and ~2 ms a pass
for MiniLM's encoder (about 7,200 objects; ~17 ms for a whole SentenceTransformer, whose
tokenizer holds a 30,522-entry vocabulary).

Objects of other packages (a logger, a lock, a tokenizer's Rust core), C-extension state,
files, other processes and threads that write after a pass has returned are not seen: the
model's code runs with the data and is trusted not to hide state there on purpose
(docs/threat_model.md, trust #2). Parameters and buffers are checked by their version counters
before every pass and bit for bit at the end (also after an error); a change to them is
refused (it would be saved with the model). A ``.data`` write to a parameter bypasses the
version counter, so one that is undone before the end of the collection is not seen.

The warning that names what was put back is built from attribute and global names only (never
from the keys of a data dict); whether it appears depends on the corpus, like an error, and
is seen by the curator only.
"""

from __future__ import annotations

import array
import collections
import dis
import functools
import importlib.util
import itertools
import operator
import os
import random
import sys
import sysconfig
import types
import warnings
import weakref
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = []

_MISSING = object()
_CELL = operator.attrgetter("cell_contents")
_DEFAULTS = operator.attrgetter("__defaults__", "__kwdefaults__")
#: Values that hold nothing mutable.
_ATOMS = (str, bytes, int, float, complex, bool, type(None), range, torch.dtype, torch.device, torch.Size,
          torch.layout, torch.memory_format)
#: Reachable objects beyond which the guard refuses (a model whose state graph is this large is
#: better run with its state made explicit).
MAX_NODES = 2_000_000
#: Methods a forward pass runs without naming them (besides every ``__dunder__`` a class defines;
#: the names a framework's own methods call, e.g. ``Conv1d.forward`` → ``_conv_forward``, are
#: read from their code).
_ENTRY_POINTS = ("forward", "__call__", "__getattr__", "__getattribute__", "__setattr__", "__delattr__",
                 "__getitem__", "__setitem__", "__iter__", "__len__", "__contains__", "__enter__", "__exit__",
                 "__init__", "__new__", "__post_init__", "__hash__", "__eq__", "__bool__",
                 "backward", "setup_context", "jvp", "vjp")
_METHODS = (types.FunctionType, staticmethod, classmethod, property, functools.cached_property)
#: torch's process-wide module hooks (a hook registered during a pass runs in every later one).
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                 "_global_forward_hooks_with_kwargs", "_global_buffer_registration_hooks",
                 "_global_module_registration_hooks", "_global_parameter_registration_hooks")


def _package(obj: object) -> str:
    module = getattr(type(obj), "__module__", None) or ""
    return module.partition(".")[0]


def _ours(obj: object) -> bool:
    """dplowrank's own machinery (the collectors' hooks and tapes change on purpose); its
    modules (a compressed layer collected again) are guarded like any other."""
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        fn = getattr(obj, "__func__", obj)
        return _top(getattr(fn, "__module__", None)) == "dplowrank"
    return _package(obj) == "dplowrank" and not isinstance(obj, nn.Module)


def _top(module: str | None) -> str:
    return (module or "").partition(".")[0]


@functools.cache
def _user_code(module: str | None) -> bool:
    """Whether ``module`` is the user's own code: loaded from a file outside the standard
    library and installed packages (a research repo's second top-level package)."""
    mod = sys.modules.get(module or "")
    path = getattr(mod, "__file__", None)
    if not path or _top(module) in ("dplowrank", "torch"):
        return False
    path = os.path.realpath(path)
    libs = {os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                                         sysconfig.get_paths()["platlib"])}
    return "site-packages" not in path and "dist-packages" not in path and not any(
        path.startswith(lib + os.sep) for lib in libs)


def _code_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object (and the code nested in it) uses, and the
    identifier-shaped string constants (``getattr(self, "step")``, ``methodcaller("step")``)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
        elif isinstance(const, str) and const.isidentifier():
            names.add(const)
    return names


def _imports(code: types.CodeType, package: str | None) -> set[str]:
    """The absolute names of the modules a code object (and the code nested in it) imports."""
    out: set[str] = set()
    level = 0
    for ins in dis.get_instructions(code):
        if ins.opname == "LOAD_CONST" and isinstance(ins.argval, int):
            level = ins.argval
        elif ins.opname == "IMPORT_NAME":
            try:
                out.add(importlib.util.resolve_name("." * level + ins.argval if level else ins.argval, package))
            except (ImportError, ValueError):
                pass
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _imports(const, package)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of the same width (a bitwise comparison: NaN payloads, −0.0)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same layout, shape, dtype and bits, in any layout."""
    if a.layout != b.layout or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.layout != torch.strided:
        a, b = a.to_dense(), b.to_dense()
    return torch.equal(_bits(a), _bits(b))


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == object:
        return all(map(operator.is_, a.flat, b.flat))
    return a.tobytes() == b.tobytes()


def _meta(t: torch.Tensor):
    """What a pass that writes ``t`` changes cheaply (version counter, storage, layout, flag)."""
    version = None if t.is_inference() or t.layout != torch.strided else t._version
    ptr = t.data_ptr() if t.layout == torch.strided else None
    return (version, ptr, tuple(t.shape), t.stride() if t.layout == torch.strided else None, t.dtype,
            t.requires_grad)


class _Node:
    """One mutable object: its shallow content as it was, how to compare and restore it."""

    __slots__ = ("obj", "kind", "saved", "name", "param")

    def __init__(self, obj, kind: str, saved, name: str, param: bool = False) -> None:
        self.obj, self.kind, self.saved, self.name, self.param = obj, kind, saved, name, param


class StateGuard:
    """Snapshot of the state a model's forward pass can reach; :meth:`reset` puts it back.

    Parameters
    ----------
    model : torch.nn.Module
        The model. Take the guard after the collection's hooks are installed and the model is in
        the mode the collection runs it in.
    functions : iterable of callables
        ``forward=`` / ``loss=``: their closures, defaults and the globals they use are guarded too.
    """

    def __init__(self, model: nn.Module, functions: Iterable[Callable] = ()) -> None:
        self.model = model
        self.nodes: list[_Node] = []
        self.seen: set[object] = set()  # ids (and (id, names) for namespaces read by name)
        self.restored: set[str] = set()  # names of the state that some pass changed
        self.params: dict[int, str] = {}
        self.finals: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, tensor, copy)
        self._scopes: dict[int, _Node] = {}
        # names of methods the walked code can call (by name: an over-approximation of the calls
        # from forward); methods of other names wait in ``pending`` until some code uses them
        self.reach: set[str] = set(_ENTRY_POINTS)
        self.pending: dict[str, list] = {}
        modules = list(model.named_modules(remove_duplicate=True))
        for name, m in modules:
            for p_name, p in list(m._parameters.items()) + list(m._buffers.items()):
                if p is not None:
                    self.params.setdefault(id(p), f"{name}.{p_name}" if name else p_name)
        classes: dict[type, None] = {}
        for _, m in modules:
            for cls in type(m).__mro__:
                if cls in (nn.Module, object):
                    break
                classes[cls] = None
        fns = [f for f in functions if f is not None]
        self.packages = {c.__module__.partition(".")[0] for c in classes} | {"__main__"}
        self.packages |= {(getattr(f, "__module__", None) or "").partition(".")[0] for f in fns}
        self.packages.discard("torch")  # torch's own code and objects: only its modules, tensors and hooks
        self.packages.discard("dplowrank")
        self.stack: list[tuple[object, str, frozenset | None]] = [
            (m, f"model.{n}" if n else "model", None) for n, m in modules]
        self.stack += [(c, f"class {c.__qualname__}", None) for c in classes]
        self.stack += [(f, f"function {getattr(f, '__qualname__', type(f).__name__)}", None) for f in fns]
        hooks = sys.modules["torch.nn.modules.module"]
        self.stack += [(getattr(hooks, h), f"torch {h}", None) for h in _GLOBAL_HOOKS if hasattr(hooks, h)]
        self._rngs()
        self._walk()
        self._index()

    # -- the snapshot -------------------------------------------------------------------------

    def _rngs(self) -> None:
        """The process-wide generators a forward pass can draw from (F.dropout's default
        training=True draws from torch's global generator even in eval mode)."""
        self._add(None, "rng", ("torch", torch.get_rng_state()), "torch's global random generator")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self._add(None, "rng", ("cuda", torch.cuda.get_rng_state_all()), "torch's CUDA random generators")
        self._add(None, "rng", ("random", random.getstate()), "Python's random module")
        self._add(None, "rng", ("numpy", np.random.get_state()), "numpy's global random generator")

    def _walk(self) -> None:
        while self.stack:
            obj, name, names = self.stack.pop()
            if isinstance(obj, _ATOMS) or _ours(obj):
                continue
            key: object = (id(obj), names) if isinstance(obj, (types.ModuleType, dict)) and names is not None \
                else id(obj)
            if key in self.seen:
                continue
            self.seen.add(key)
            if len(self.seen) > MAX_NODES:
                raise ValueError(
                    f"the model's reachable state holds more than {MAX_NODES} objects: too many to restore "
                    "before every forward pass. Keep large data out of the model's attributes and globals"
                )
            self._visit(obj, name, names)

    def _add(self, obj, kind: str, saved, name: str, children: Iterable = (), param: bool = False) -> None:
        self.nodes.append(_Node(obj, kind, saved, name, param))
        self.stack.extend((c, n, None) for c, n in children)

    def _ours_code(self, module: str | None) -> bool:
        """Code the walk follows: the model's packages, and the user's own modules (which join them)."""
        top = _top(module)
        if top in self.packages:
            return True
        if _user_code(module):
            self.packages.add(top)
            return True
        return False

    def _visit(self, obj, name: str, names: frozenset | None) -> None:
        if isinstance(obj, torch.Tensor):
            self._tensor(obj, name)
        elif isinstance(obj, np.ndarray):
            self._add(obj, "array", obj.copy(), name,
                      [(x, f"{name}[]") for x in obj.flat] if obj.dtype == object else ())
        elif isinstance(obj, types.ModuleType):
            if names is not None and self._ours_code(obj.__name__):
                self._scope(vars(obj), f"module {obj.__name__}", names)
        elif isinstance(obj, dict) and names is not None:  # a function's globals
            self._scope(obj, name, names)
        elif isinstance(obj, type):
            if self._ours_code(obj.__module__) or name.startswith("class "):
                saved = dict(vars(obj))
                self._add(obj, "class", saved, name)
                for k, v in saved.items():  # methods: only those whose name the walked code uses
                    dunder = k.startswith("__") and k.endswith("__")  # called by the language, not by name
                    if isinstance(v, _METHODS) and k not in self.reach and not dunder:
                        self.pending.setdefault(k, []).append((v, f"{name}.{k}"))
                    else:
                        self.stack.append((v, f"{name}.{k}", None))
        elif isinstance(obj, types.FunctionType):
            if self._ours_code(obj.__module__) or name.startswith("function "):
                self._function(obj, name)
            else:  # a framework's method (torch's Conv1d.forward): the names it calls can run our overrides
                self._reach(_code_names(obj.__code__))
        elif isinstance(obj, (staticmethod, classmethod)):
            self.stack.append((obj.__func__, name, None))
        elif isinstance(obj, property):
            self.stack += [(f, name, None) for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
        elif isinstance(obj, functools.cached_property):
            self.stack.append((obj.func, name, None))
        elif hasattr(type(obj), "cache_clear") and hasattr(obj, "cache_info") and hasattr(obj, "__wrapped__"):
            # an lru_cache: emptied when a pass added an entry (its entries are not reachable; a hit on
            # an entry cached before the collection is not a change)
            self._add(obj, "lru", obj.cache_info().currsize, name, [(obj.__wrapped__, name)])
        elif isinstance(obj, (weakref.WeakValueDictionary, weakref.WeakKeyDictionary)):
            self.stack.append((obj.data, name, None))  # type: ignore[union-attr]  # typeshed omits .data
        elif isinstance(obj, weakref.ref):
            target = obj()
            if target is not None:
                self.stack.append((target, name, None))
        elif isinstance(obj, array.array):
            self._add(obj, "carray", obj.tobytes(), name)
        elif isinstance(obj, (types.GeneratorType, itertools.count)):  # state that cannot be put back
            self._add(obj, "opaque", _opaque(obj), name)
        elif isinstance(obj, types.MethodType):
            self.stack += [(obj.__func__, name, None), (obj.__self__, f"{name}.__self__", None)]
        elif isinstance(obj, types.CellType):
            try:
                v = obj.cell_contents
            except ValueError:
                v = _MISSING
            self._add(obj, "cell", v, name, [] if v is _MISSING else [(v, name)])
        elif isinstance(obj, (torch.Generator, random.Random, np.random.Generator, np.random.RandomState)):
            self._add(obj, "rng", ("object", _rng_state(obj)), name)
        elif isinstance(obj, dict):
            self._mapping(obj, name, data=True)
            self._extras(obj, name)
            if isinstance(obj, collections.OrderedDict):  # its order is not the dict's (move_to_end)
                self._add(obj, "order", tuple(collections.OrderedDict.keys(obj)), name)
        elif isinstance(obj, (list, collections.deque)):
            items = list(obj)
            self._add(obj, "list" if isinstance(obj, list) else "deque", items, name,
                      [(v, f"{name}[]") for v in items])
            self._extras(obj, name)
        elif isinstance(obj, (set, frozenset)):
            members = set(obj)
            if isinstance(obj, set):
                self._add(obj, "set", members, name)
            self.stack.extend((v, f"{name}{{}}", None) for v in members)
            self._extras(obj, name)
        elif isinstance(obj, tuple):
            self.stack.extend((v, f"{name}[]", None) for v in obj)
            self._extras(obj, name)
        elif isinstance(obj, bytearray):
            self._add(obj, "bytes", bytes(obj), name)
        elif isinstance(obj, functools.partial):
            self.stack += [(obj.func, name, None), (obj.args, name, None), (obj.keywords, f"{name} keywords", None)]
            self._extras(obj, name)
        elif isinstance(obj, (nn.Module, types.SimpleNamespace)) or _package(obj) in self.packages:
            self._object(obj, name)

    def _extras(self, obj, name: str) -> None:
        """The attributes of a subclass of a container (a ModelOutput is a dict with fields)."""
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict) and type(obj).__module__ != "builtins":
            self._mapping(d, name)

    def _mapping(self, d: dict, name: str, data: bool = False, exempt: frozenset = frozenset()) -> None:
        """A namespace (``data=False``: its keys are names, shown in the warning) or a data dict
        (its keys may be private values: never shown; they are walked as objects). ``exempt``:
        keys of data-free caches that dplowrank's own modules declare (``_guard_exempt``)."""
        saved = dict(dict.items(d))  # the stored values (a subclass's __getitem__ may compute them)
        if exempt:
            saved = {k: v for k, v in saved.items() if k not in exempt}
        factory = getattr(d, "default_factory", None)
        self._add(d, "dict", (saved, tuple(saved), tuple(saved.values()), factory, exempt), name,
                  [(v, f"{name}[]" if data else (f"{name}.{k}" if isinstance(k, str) else f"{name}[]"))
                   for k, v in saved.items()]
                  + ([(k, f"{name} key") for k in saved if not isinstance(k, _ATOMS)])
                  + ([(factory, f"{name} default_factory")] if factory is not None else []))

    def _scope(self, d: dict, name: str, names: frozenset) -> None:
        """Only the ``names`` of a module's globals (what the code that reaches them uses); one
        node per namespace, grown as more code is found to use it."""
        node = self._scopes.get(id(d))
        known = set(node.saved[0]) if node is not None else set()
        keys = tuple(sorted(n for n in names if n in d and n not in known))
        if not keys:
            return
        if node is None:
            node = self._scopes[id(d)] = _Node(d, "scope", ((), (), None), name)
            self.nodes.append(node)
        all_keys = node.saved[0] + keys
        node.saved = (all_keys, tuple(d[k] for k in all_keys), operator.itemgetter(*all_keys))
        self.stack.extend((d[k], f"{name}.{k}", None) for k in keys)
        # a module reached from code: the attributes that code reads are followed with the same names
        self.stack.extend((d[k], f"{name}.{k}", names) for k in keys if isinstance(d[k], types.ModuleType))

    def _object(self, obj, name: str) -> None:
        for cls in type(obj).__mro__:  # class-level state of classes never named in walked code
            if cls is not object and self._ours_code(cls.__module__):
                self.stack.append((cls, f"class {cls.__qualname__}", None))
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            own = _top(type(obj).__module__) == "dplowrank"
            self._mapping(d, name, exempt=frozenset(getattr(type(obj), "_guard_exempt", ())) if own else frozenset())
        slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ())
                 if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
        if slots:
            saved = {}
            for s in slots:
                try:
                    saved[s] = object.__getattribute__(obj, s)
                except AttributeError:
                    saved[s] = _MISSING
            self._add(obj, "slots", saved, name, [(v, f"{name}.{s}") for s, v in saved.items() if v is not _MISSING])

    def _reach(self, names: set[str]) -> None:
        """Methods of these names can now run: walk the ones that were waiting."""
        for n in names - self.reach:
            self.reach.add(n)
            self.stack.extend((v, label, None) for v, label in self.pending.pop(n, ()))

    def _function(self, fn: types.FunctionType, name: str) -> None:
        self._reach(_code_names(fn.__code__))
        self._add(fn, "function", (fn.__defaults__, fn.__kwdefaults__), name,
                  [(fn.__defaults__, f"{name} defaults"), (fn.__kwdefaults__, f"{name} defaults")]
                  + [(c, f"{name} closure") for c in fn.__closure__ or ()])
        self._mapping(fn.__dict__, f"{name} attributes")  # a memo kept on the function, a wrapped original
        if _top(fn.__module__) != "dplowrank":
            names = frozenset(_code_names(fn.__code__))
            self.stack.append((fn.__globals__, f"module {fn.__module__}", names))
            # modules the code imports inside itself (``from .lazy import x``): the names it uses there
            for module in _imports(fn.__code__, fn.__globals__.get("__package__")):
                mod = sys.modules.get(module)
                if isinstance(mod, types.ModuleType) and self._ours_code(module):
                    self.stack.append((mod, f"module {module}", names))

    def _tensor(self, t: torch.Tensor, name: str) -> None:
        param = id(t) in self.params
        label = self.params.get(id(t), name)
        saved = (t.detach().clone(), _meta(t))
        self._add(t, "tensor", saved, label, param=param)
        if param:
            self.finals.append((label, t, saved[0]))
        extra = getattr(t, "__dict__", None)
        if isinstance(extra, dict):  # Python attributes set on a tensor
            self._mapping(extra, f"{label} attributes")

    # -- compare and restore ------------------------------------------------------------------

    def _index(self) -> None:
        """Flat tuples of what the namespace nodes held, so that an unchanged state is confirmed
        by a few loops in C (:meth:`_quiet`): a pass over MiniLM's state takes ~1 ms."""
        of = {kind: [n for n in self.nodes if n.kind == kind] for kind in
              ("dict", "list", "deque", "cell", "function", "class")}
        plain = [n for n in of["dict"] if n.saved[3] is None and not n.saved[4]]
        self._dicts = [n.obj for n in plain]
        self._dict_lens = tuple(len(n.saved[1]) for n in plain)  # dict.__len__: a subclass may redefine len
        self._dict_keys = tuple(chain.from_iterable(n.saved[1] for n in plain))
        self._dict_values = tuple(chain.from_iterable(n.saved[2] for n in plain))
        seqs = of["list"] + of["deque"]
        self._seqs = [n.obj for n in seqs]
        self._seq_lens = tuple(len(n.saved) for n in seqs)
        self._seq_values = tuple(chain.from_iterable(n.saved for n in seqs))
        self._cells = [n.obj for n in of["cell"] if n.saved is not _MISSING]
        self._cell_values = tuple(n.saved for n in of["cell"] if n.saved is not _MISSING)
        self._fns = [n.obj for n in of["function"]]
        self._fn_values = tuple(chain.from_iterable(n.saved for n in of["function"]))
        self._classes = [n.obj for n in of["class"]]
        self._class_lens = tuple(len(n.saved) for n in of["class"])
        self._class_values = tuple(chain.from_iterable(n.saved.values() for n in of["class"]))
        orders = [n for n in self.nodes if n.kind == "order"]
        self._ods = [n.obj for n in orders]
        self._od_orders = tuple(n.saved for n in orders)
        indexed = {id(n) for n in plain + seqs + of["function"] + of["class"] + orders}
        indexed |= {id(n) for n in of["cell"] if n.saved is not _MISSING}
        self._others = [n for n in self.nodes if id(n) not in indexed]

    def _quiet(self) -> bool:
        """True when no node changed (a quick check; :meth:`_changed` names the ones that did)."""
        same = operator.is_
        if (tuple(map(dict.__len__, self._dicts)) != self._dict_lens
                or not all(map(same, chain.from_iterable(map(dict.values, self._dicts)), self._dict_values))
                or not all(map(same, chain.from_iterable(map(dict.keys, self._dicts)), self._dict_keys))):
            return False
        if (tuple(map(len, self._seqs)) != self._seq_lens
                or not all(map(same, chain.from_iterable(self._seqs), self._seq_values))):
            return False
        try:
            if not all(map(same, map(_CELL, self._cells), self._cell_values)):
                return False
        except ValueError:  # a cell emptied
            return False
        if not all(map(same, chain.from_iterable(map(_DEFAULTS, self._fns)), self._fn_values)):
            return False
        if tuple(map(tuple, map(collections.OrderedDict.keys, self._ods))) != self._od_orders:
            return False
        classes = [vars(c) for c in self._classes]
        if (tuple(map(len, classes)) != self._class_lens
                or not all(map(same, chain.from_iterable(c.values() for c in classes), self._class_values))):
            return False
        return not any(self._changed(n) for n in self._others)

    @staticmethod
    def _changed(node: _Node) -> bool:
        obj, saved, kind = node.obj, node.saved, node.kind
        if kind == "dict":  # same keys and values, as objects (tensors have no plain ==)
            _, keys, values, factory, exempt = saved
            now = {k: v for k, v in dict.items(obj) if k not in exempt} if exempt else obj
            return (dict.__len__(now) != len(keys) or not all(map(operator.is_, dict.values(now), values))
                    or not all(map(operator.is_, dict.keys(now), keys))
                    or getattr(obj, "default_factory", None) is not factory)
        if kind == "scope":
            keys, values, getter = saved
            try:
                now = getter(obj)
            except KeyError:
                return True
            return not all(map(operator.is_, now if len(keys) > 1 else (now,), values))
        if kind in ("list", "deque"):
            return len(obj) != len(saved) or not all(map(operator.is_, obj, saved))
        if kind == "set":
            return obj != saved
        if kind == "bytes":
            return bytes(obj) != saved
        if kind == "cell":
            try:
                return obj.cell_contents is not saved
            except ValueError:
                return saved is not _MISSING
        if kind == "class":
            now = vars(obj)
            return len(now) != len(saved) or any(now.get(k, _MISSING) is not v for k, v in saved.items())
        if kind == "slots":
            for s, v in saved.items():
                try:
                    if object.__getattribute__(obj, s) is not v:
                        return True
                except AttributeError:
                    if v is not _MISSING:
                        return True
            return False
        if kind == "function":
            return obj.__defaults__ is not saved[0] or obj.__kwdefaults__ is not saved[1]
        if kind == "array":
            return not _same_array(obj, saved)
        if kind == "rng":
            return not _same_rng(saved, obj)
        if kind == "order":
            return tuple(collections.OrderedDict.keys(obj)) != saved
        if kind == "lru":
            return obj.cache_info().currsize != saved
        if kind == "carray":
            return obj.tobytes() != saved
        if kind == "opaque":
            now = _opaque(obj)
            return (now[0] != saved[0] or len(now[1]) != len(saved[1])
                    or not all(map(operator.is_, now[1], saved[1])))
        copy, meta = saved  # tensor: parameters and buffers by version, other tensors bit for bit
        if _meta(obj) != meta:
            return True
        return not node.param and not _equal(obj.detach(), copy)

    @staticmethod
    def _restore(node: _Node) -> None:
        obj, saved, kind = node.obj, node.saved, node.kind
        if kind == "dict":
            content, _, _, factory, exempt = saved
            kept = {k: v for k, v in dict.items(obj) if k in exempt} if exempt else {}
            if type(obj) is dict:
                dict.clear(obj)
                dict.update(obj, content)
                dict.update(obj, kept)
            else:  # the stored values, past a subclass's own __setitem__
                ordered = isinstance(obj, collections.OrderedDict)
                setitem = collections.OrderedDict.__setitem__ if ordered else dict.__setitem__
                obj.clear()
                for k, v in chain(content.items(), kept.items()):
                    setitem(obj, k, v)
            if getattr(obj, "default_factory", None) is not factory:
                obj.default_factory = factory
        elif kind == "scope":
            keys, values, _ = saved
            for k, v in zip(keys, values):
                if obj.get(k, _MISSING) is not v:
                    obj[k] = v
        elif kind == "list":
            obj[:] = saved
        elif kind == "deque":
            obj.clear()
            obj.extend(saved)
        elif kind == "set":
            obj.clear()
            obj.update(saved)
        elif kind == "bytes":
            obj[:] = saved
        elif kind == "cell":
            if saved is _MISSING:
                del obj.cell_contents
            else:
                obj.cell_contents = saved
        elif kind == "class":
            for k in [k for k in vars(obj) if k not in saved]:
                delattr(obj, k)
            for k, v in saved.items():
                if vars(obj).get(k, _MISSING) is not v:
                    setattr(obj, k, v)
        elif kind == "slots":
            for s, v in saved.items():
                if v is _MISSING:
                    try:
                        object.__delattr__(obj, s)
                    except AttributeError:
                        pass
                else:
                    object.__setattr__(obj, s, v)
        elif kind == "function":
            obj.__defaults__ = saved[0]
            obj.__kwdefaults__ = saved[1]
        elif kind == "array":
            if obj.shape != saved.shape or obj.dtype != saved.dtype:
                raise ValueError(f"{node.name} (a numpy array) changed its shape during a forward pass and cannot "
                                 "be put back in place; statistics need a forward pass that keeps no state")
            np.copyto(obj, saved)
        elif kind == "rng":
            _set_rng(saved, obj)
        elif kind == "order":
            for k in saved:
                if k in obj:
                    obj.move_to_end(k)
        elif kind == "lru":
            obj.cache_clear()
            node.saved = 0
        elif kind == "carray":
            obj[:] = array.array(obj.typecode, saved)
        elif kind == "opaque":  # refused by reset once everything else is back
            pass
        else:  # tensor
            copy, meta = saved
            if obj.requires_grad != meta[-1] and obj.is_leaf:
                obj.requires_grad_(meta[-1])
            with torch.inference_mode(obj.is_inference()), torch.no_grad():
                if obj.layout != torch.strided or obj.shape != copy.shape or obj.dtype != copy.dtype \
                        or obj.stride() != copy.stride():
                    obj.data = copy.clone()
                else:
                    obj.copy_(copy)
            node.saved = (copy, _meta(obj))

    def reset(self, refuse: bool = True) -> None:
        """Put back whatever the forward passes since the last reset changed (call before each
        pass). A changed parameter or buffer is put back and refused (unless ``refuse=False``:
        the clean-up after an error)."""
        if self._quiet():
            return
        changed = [node for node in self.nodes if self._changed(node)]
        if not changed:
            return
        with torch.inference_mode(False), torch.no_grad():
            for node in changed:
                self._restore(node)
        opaque = sorted(node.name for node in changed if node.kind == "opaque")
        if opaque and refuse:
            raise ValueError(
                f"{opaque[:3]} (a generator or an itertools counter) advanced during a forward pass; its state "
                "cannot be put back: statistics need a forward pass that keeps no state"
            )
        params = sorted({node.name for node in changed if node.param})
        if params and refuse:
            raise ValueError(
                f"the model changed its state {params[:5]} while computing statistics (in eval mode); it "
                "would carry private data into the saved model. It was restored; statistics need a model "
                "whose forward pass leaves its parameters and buffers alone"
            )
        self.restored.update(node.name for node in changed)

    def _moved(self) -> list[str]:
        """Put back every parameter and buffer that differs from its copy, bit for bit (a
        ``.data`` write moves no version counter); their names."""
        moved = [name for name, t, copy in self.finals if not _equal(t.detach(), copy)]
        with torch.inference_mode(False), torch.no_grad():
            for name, t, copy in self.finals:
                if name in moved:
                    if t.shape == copy.shape and t.dtype == copy.dtype and t.layout == torch.strided:
                        t.copy_(copy)
                    else:
                        t.data = copy.clone()
        return moved

    def restore(self) -> None:
        """The clean-up after an error: everything put back, parameters compared in full; no
        refusal, no warning."""
        self.reset(refuse=False)
        self._moved()

    def close(self) -> None:
        """The last reset, then every parameter and buffer compared in full, and a warning
        naming the state that was put back."""
        self.reset()
        moved = self._moved()
        if moved:
            raise ValueError(
                f"the model changed its state {moved[:5]} while computing statistics (in eval mode); it would "
                "carry private data into the saved model. It was restored; statistics need a model whose "
                "forward pass leaves its parameters and buffers alone"
            )
        if self.restored:
            warnings.warn(
                f"the model's forward pass changed {sorted(self.restored)[:5]}: kept state (a cache, an observer, "
                "a random generator) was put back before every forward pass, so each example met the model as "
                "it was before the collection", stacklevel=3)


def _opaque(obj) -> tuple:
    """What can be seen of a generator's or counter's state: its position and its local values."""
    if isinstance(obj, types.GeneratorType):
        frame = obj.gi_frame
        return (None, ()) if frame is None else (frame.f_lasti, tuple(frame.f_locals.values()))
    return (repr(obj), ())


def _rng_state(obj):
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, random.Random):
        return obj.getstate()
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    return obj.get_state()


def _same_rng(saved, obj) -> bool:
    kind, state = saved
    if kind == "torch":
        return torch.equal(torch.get_rng_state(), state)
    if kind == "cuda":
        return all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), state))
    if kind == "random":
        return random.getstate() == state
    if kind == "numpy":
        legacy: Any = np.random.get_state()  # a tuple (typeshed allows a dict)
        return bool(legacy[0] == state[0] and np.array_equal(legacy[1], state[1]) and legacy[2:] == state[2:])
    now: Any = _rng_state(obj)
    if isinstance(now, torch.Tensor):
        return torch.equal(now, state)
    if isinstance(now, tuple) and len(now) == 5 and isinstance(now[1], np.ndarray):
        return now[0] == state[0] and np.array_equal(now[1], state[1]) and now[2:] == state[2:]
    return now == state


def _set_rng(saved, obj) -> None:
    kind, state = saved
    if kind == "torch":
        torch.set_rng_state(state)
    elif kind == "cuda":
        torch.cuda.set_rng_state_all(state)
    elif kind == "random":
        random.setstate(state)
    elif kind == "numpy":
        np.random.set_state(state)
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, random.Random):
        obj.setstate(state)
    elif isinstance(obj, np.random.Generator):
        obj.bit_generator.state = state
    else:
        obj.set_state(state)
