"""Isolation by construction: every forward pass of a collection starts from the same model state.

A forward pass that keeps state (a range observer, a recurrent state, a lazily filled cache, a
counter in a closure or a global) would carry one example into the next example's contribution,
and the clipping bound would no longer be the sensitivity: an observer kept as a plain float
moved a released Gram by 45.8·C between neighbours. Checking the state once at the end of a
collection is not enough (state that is back at its start value by then, or that the check does
not look at, passed with 33–39·C), so :class:`StateGuard` snapshots everything the model's code
can reach from Python and *puts it back before every forward pass*: each example meets the model
exactly as it was before the collection, whatever the previous examples did to it.

What the snapshot covers (the *reachable state*):

- every module's ``__dict__`` (public and underscore attributes, hooks, the training flag),
  and the classes of the modules (class attributes, down to :class:`torch.nn.Module`);
- the globals of the Python modules that define those classes and of ``forward=`` / ``loss=``
  functions, and the closures and default arguments of the functions found there;
- inside those: dicts, lists, sets, deques, bytearrays, tuples, closure cells, numpy arrays,
  tensors (by their version counter and a copy), and objects of the packages that define the
  model (``__dict__`` and ``__slots__``), to any depth.

Objects of other packages (a logger, a lock, a tokenizer's Rust core), C-extension state, files
and other processes are not seen: the model's code runs with the data and is trusted not to hide
state there on purpose (docs/threat_model.md, trust #2). Parameters and buffers are checked by
their version counters before every pass and in full at the end; a change to them is refused
(it would be saved with the model). ``.data`` writes bypass the version counter, so one that is
undone before the end of the collection is not seen.
"""

from __future__ import annotations

import collections
import operator
import sys
from itertools import chain
import types
import warnings
from collections.abc import Callable, Iterable

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


def _package(obj: object) -> str:
    module = getattr(type(obj), "__module__", None) or ""
    return module.partition(".")[0]


def _ours(obj: object) -> bool:
    """dplowrank's own objects (the collectors' hooks and tapes change on purpose)."""
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        fn = getattr(obj, "__func__", obj)
        return (getattr(fn, "__module__", None) or "").startswith("dplowrank")
    return _package(obj) == "dplowrank"


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
        ``forward=`` / ``loss=``: their closures, defaults and module globals are guarded too.
    """

    def __init__(self, model: nn.Module, functions: Iterable[Callable] = ()) -> None:
        self.model = model
        self.nodes: list[_Node] = []
        self.seen: set[int] = set()
        self.restored: set[str] = set()  # names of the state that some pass changed
        self.params: dict[int, str] = {}
        self.finals: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, tensor, copy)
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
        self.packages.discard("dplowrank")
        self.packages.discard("torch")  # torch's own objects: only its modules and tensors are walked
        self.stack: list[tuple[object, str]] = [(m, f"model.{n}" if n else "model") for n, m in modules]
        self.stack += [(c, f"class {c.__qualname__}") for c in classes]
        self.stack += [(f, f"function {getattr(f, '__qualname__', type(f).__name__)}") for f in fns]
        globs = {c.__module__ for c in classes} | {getattr(f, "__module__", None) for f in fns}
        self.roots = {g for g in globs if g in sys.modules and not g.startswith(("dplowrank", "torch"))}
        self.stack += [(sys.modules[g], f"module {g}") for g in sorted(self.roots)]
        self._walk()
        self._index()

    # -- the snapshot -------------------------------------------------------------------------

    def _walk(self) -> None:
        while self.stack:
            obj, name = self.stack.pop()
            if id(obj) in self.seen or isinstance(obj, _ATOMS) or _ours(obj):
                continue
            self.seen.add(id(obj))
            if len(self.seen) > MAX_NODES:
                raise ValueError(
                    f"the model's reachable state holds more than {MAX_NODES} objects: too many to restore "
                    "before every forward pass. Keep large data out of the model's attributes and globals"
                )
            self._visit(obj, name)

    def _add(self, obj, kind: str, saved, name: str, children: Iterable[tuple[object, str]] = (),
             param: bool = False) -> None:
        self.nodes.append(_Node(obj, kind, saved, name, param))
        self.stack.extend(children)

    def _visit(self, obj, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            self._tensor(obj, name)
        elif isinstance(obj, np.ndarray):
            self._add(obj, "array", obj.copy(), name,
                      [(x, f"{name}[]") for x in obj.flat] if obj.dtype == object else ())
        elif isinstance(obj, types.ModuleType):
            if obj.__name__ in self.roots:  # other modules it refers to are not walked
                self._mapping(vars(obj), name)
        elif isinstance(obj, type):
            if obj.__module__ in self.roots or name.startswith("class "):
                saved = dict(vars(obj))
                self._add(obj, "class", saved, name, [(v, f"{name}.{k}") for k, v in saved.items()])
        elif isinstance(obj, types.FunctionType):
            self._function(obj, name)
        elif isinstance(obj, types.MethodType):
            self.stack += [(obj.__func__, name), (obj.__self__, f"{name}.__self__")]
        elif isinstance(obj, types.CellType):
            try:
                v = obj.cell_contents
            except ValueError:
                v = _MISSING
            self._add(obj, "cell", v, name, [] if v is _MISSING else [(v, name)])
        elif isinstance(obj, dict):
            self._mapping(obj, name)
        elif isinstance(obj, (list, collections.deque)):
            saved = list(obj)
            self._add(obj, "list" if isinstance(obj, list) else "deque", saved, name,
                      [(v, f"{name}[{i}]") for i, v in enumerate(saved)])
        elif isinstance(obj, (set, frozenset)):
            saved = set(obj)
            if isinstance(obj, set):
                self._add(obj, "set", saved, name)
            self.stack.extend((v, f"{name}{{}}") for v in saved)
        elif isinstance(obj, tuple):
            self.stack.extend((v, f"{name}[{i}]") for i, v in enumerate(obj))
        elif isinstance(obj, bytearray):
            self._add(obj, "bytes", bytes(obj), name)
        elif isinstance(obj, nn.Module) or _package(obj) in self.packages:
            self._object(obj, name)

    def _mapping(self, d: dict, name: str) -> None:
        saved = dict(dict.items(d))  # the stored values (a subclass's __getitem__ may compute them)
        self._add(d, "dict", (saved, tuple(saved), tuple(saved.values())), name,
                  [(v, f"{name}.{k}" if isinstance(k, str) else f"{name}[{k!r}]") for k, v in saved.items()])

    def _object(self, obj, name: str) -> None:
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            self._mapping(d, name)
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

    def _function(self, fn: types.FunctionType, name: str) -> None:
        self._add(fn, "function", (fn.__defaults__, fn.__kwdefaults__), name,
                  [(fn.__defaults__, f"{name} defaults"), (fn.__kwdefaults__, f"{name} defaults")]
                  + [(c, f"{name} closure") for c in fn.__closure__ or ()])

    def _tensor(self, t: torch.Tensor, name: str) -> None:
        param = id(t) in self.params
        label = self.params.get(id(t), name)
        saved = (t.detach().clone(), _meta(t))
        self._add(t, "tensor", saved, label, param=param)
        if param:
            self.finals.append((label, t, saved[0]))

    # -- compare and restore ------------------------------------------------------------------

    def _index(self) -> None:
        """Flat tuples of what every node held, so that an unchanged state is confirmed by a few
        loops in C (:meth:`_quiet`): a pass over MiniLM's 35,000 reachable values takes ~1 ms."""
        of = {kind: [n for n in self.nodes if n.kind == kind] for kind in
              ("dict", "list", "deque", "cell", "function", "class", "set", "tensor")}
        self._dicts = [n.obj for n in of["dict"]]
        self._dict_lens = tuple(len(n.saved[1]) for n in of["dict"])
        self._dict_keys = tuple(chain.from_iterable(n.saved[1] for n in of["dict"]))
        self._dict_values = tuple(chain.from_iterable(n.saved[2] for n in of["dict"]))
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
        self._sets = [(n.obj, n.saved) for n in of["set"]]
        self._tensors = [n for n in of["tensor"]]
        self._others = [n for n in self.nodes if n.kind in ("bytes", "slots", "array")
                        or (n.kind == "cell" and n.saved is _MISSING)]

    def _quiet(self) -> bool:
        """True when no node changed (a quick check; :meth:`_changed` names the ones that did)."""
        same = operator.is_
        if (tuple(map(len, self._dicts)) != self._dict_lens
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
        classes = [vars(c) for c in self._classes]
        if (tuple(map(len, classes)) != self._class_lens
                or not all(map(same, chain.from_iterable(c.values() for c in classes), self._class_values))):
            return False
        if not all(a == b for a, b in self._sets):
            return False
        return not any(self._changed(n) for n in self._tensors) and not any(self._changed(n) for n in self._others)

    @staticmethod
    def _changed(node: _Node) -> bool:
        obj, saved, kind = node.obj, node.saved, node.kind
        if kind == "dict":  # same keys and values, as objects (tensors have no plain ==)
            _, keys, values = saved
            return (len(obj) != len(keys) or not all(map(operator.is_, dict.values(obj), values))
                    or not all(map(operator.is_, dict.keys(obj), keys)))
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
            return obj.shape != saved.shape or obj.dtype != saved.dtype or not np.array_equal(obj, saved,
                                                                                            equal_nan=True)
        copy, meta = saved  # tensor
        if meta is None:
            return not _equal(obj.detach(), copy)
        return _meta(obj) != meta

    @staticmethod
    def _restore(node: _Node) -> None:
        obj, saved, kind = node.obj, node.saved, node.kind
        if kind == "dict":
            saved = saved[0]
            if type(obj) is dict:
                dict.clear(obj)
                dict.update(obj, saved)
            else:  # the stored values, past a subclass's own __setitem__
                ordered = isinstance(obj, collections.OrderedDict)
                setitem = collections.OrderedDict.__setitem__ if ordered else dict.__setitem__
                obj.clear()
                for k, v in saved.items():
                    setitem(obj, k, v)
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
        else:  # tensor
            copy, _ = saved
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
        params = sorted({node.name for node in changed if node.param})
        if params and refuse:
            raise ValueError(
                f"the model changed its state {params[:5]} while computing statistics (in eval mode); it "
                "would carry private data into the saved model. It was restored; statistics need a model "
                "whose forward pass leaves its parameters and buffers alone"
            )
        self.restored.update(node.name for node in changed)

    def close(self) -> None:
        """The last reset, then every parameter and buffer compared in full (``.data`` writes do
        not move version counters), and a warning naming the state that was put back."""
        self.reset()
        moved = [name for name, t, copy in self.finals if not _equal(t.detach(), copy)]
        if moved:
            with torch.no_grad():
                for name, t, copy in self.finals:
                    if name in moved and t.shape == copy.shape and t.dtype == copy.dtype:
                        t.copy_(copy)
            raise ValueError(
                f"the model changed its state {moved[:5]} while computing statistics (in eval mode); it would "
                "carry private data into the saved model. It was restored; statistics need a model whose "
                "forward pass leaves its parameters and buffers alone"
            )
        if self.restored:
            warnings.warn(
                f"the model's forward pass changed {sorted(self.restored)[:5]}: kept state (a cache, an observer) "
                "was put back before every forward pass, so each example met the model as it was before the "
                "collection", stacklevel=3)


def _meta(t: torch.Tensor):
    """What a pass that writes ``t`` changes cheaply (its version counter, storage, layout), or
    None where there is no version counter (inference tensors, sparse layouts): then ``t`` is
    compared by value."""
    if t.is_inference() or t.layout != torch.strided:
        return None
    return (t._version, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same layout, shape, dtype and values (NaN equal to NaN), in any layout."""
    if a.layout != b.layout or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.layout != torch.strided:
        a, b = a.to_dense(), b.to_dense()
    return torch.equal(a, b) or _both_nan(a, b)


def _both_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not (a.is_floating_point() or a.is_complex()):
        return False
    return bool(torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num()))
