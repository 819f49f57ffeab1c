"""Exact memoisation for the sweep's builders: a grid builds thousands of configurations that
share most of their parts (one service distribution, a few predictors); building each part once,
and parsing each distinct option value once, is most of what keeps a sweep's cost per
configuration near that of one hand-built batched call."""

from __future__ import annotations

import argparse


class _Reads:
    """Parsed options that remember which of them were read."""

    def __init__(self, args):
        self._args = args
        self.names = []

    def __getattr__(self, name):
        value = getattr(self._args, name)
        self.names.append(name)
        return value


class MemoByReads:
    """fn(args) memoised on the options it reads.

    A builder that reads options N and gets values V follows one path and returns one value; any
    other args with the same values for N make it read the same N and return the same value. So
    the cache is exact for builders that are pure functions of their options, without declaring
    which options each builder uses. Entries: {names read: {their values: result}}.
    """

    def __init__(self, fn):
        self.fn = fn
        self.entries: dict[tuple[str, ...], dict[tuple, object]] = {}

    def __call__(self, args: argparse.Namespace):
        for names, results in self.entries.items():
            values = tuple(getattr(args, n) for n in names)
            if values in results:
                return results[values]
        reads = _Reads(args)
        result = self.fn(reads)
        names = tuple(dict.fromkeys(reads.names))
        self.entries.setdefault(names, {})[tuple(getattr(args, n) for n in names)] = result
        return result


class PointParser:
    """A point's options parsed as the command's parser would, at one argparse call per distinct
    option value rather than one per point.

    Every option is a plain store or store_true action, which sets only its own attribute: the
    namespace of a point is the first point's namespace with each option set to its own parsed
    value. Each value is parsed once, by argparse itself (types, choices and their errors), in
    the first point's command line. A parser with any other kind of action parses every point
    in full.
    """

    def __init__(self, parser: argparse.ArgumentParser, to_argv):
        self.parser = parser
        self.to_argv = to_argv  # point -> command line
        self.simple = all(type(a) in (argparse._StoreAction, argparse._StoreTrueAction,
                                      argparse._HelpAction) for a in parser._actions)
        self.templates: dict[tuple[str, ...], tuple[dict, argparse.Namespace]] = {}
        self.values: dict[tuple, object] = {}  # (option names, option, value) -> parsed

    def __call__(self, point: dict) -> argparse.Namespace:
        if not self.simple:
            return self.parser.parse_args(self.to_argv(point))
        names = tuple(point)
        if names not in self.templates:
            self.templates[names] = (dict(point), self.parser.parse_args(self.to_argv(point)))
        template, parsed = self.templates[names]
        args = argparse.Namespace(**vars(parsed))
        for name, value in point.items():
            if type(value) is type(template[name]) and value == template[name]:
                continue
            key = (names, name, type(value), value)
            if key not in self.values:
                one = self.parser.parse_args(self.to_argv({**template, name: value}))
                self.values[key] = getattr(one, name)
            setattr(args, name, self.values[key])
        return args
