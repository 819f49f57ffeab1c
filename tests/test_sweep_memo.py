"""The sweep's shortcuts are exact: parsing a point value by value gives argparse's namespace, and
building parts once per distinct option value gives the configurations built one by one."""

import argparse
import random

import jax
import numpy as np
import pytest

from jaxq.cli import build_model, build_system
from jaxq.sweep import expand
from jaxq.sweep.memo import MemoByReads, PointParser
from jaxq.sweep.runner import option_parser, point_argv

GRID = {"policy": ["fcfs", "sprpt", "onebit", "sprpt-limited"],
        "service": ["exponential", "weibull", "uniform"],
        "predictor": ["perfect", "lognormal", "uniform"],
        "load": ["0.5", "0.9"], "sigma": ["0.5", "1"], "alpha": ["0.5"],
        "threshold": ["1", "2.5"], "preemptive": ["true", "false"], "shape": ["0.5", "2"],
        "seed": ["0", "3"], "jobs": ["100"]}


def _points(n, seed=0):
    rng = random.Random(seed)
    return [{k: rng.choice(v) for k, v in GRID.items()} for _ in range(n)]


def test_point_parser_equals_argparse():
    parser = option_parser("queue")
    parse = PointParser(parser, lambda p: point_argv(parser, p))
    assert parse.simple
    for point in _points(300):
        assert vars(parse(point)) == vars(parser.parse_args(point_argv(parser, point)))
    # A value of another type is parsed anew, and refused as the command would refuse it.
    point = _points(1)[0]
    parse(point)
    with pytest.raises(ValueError, match="--jobs: invalid int value: '1.5'"):
        parse({**point, "jobs": 1.5})
    with pytest.raises(ValueError, match="--load: invalid float value: 'x'"):
        parse({**point, "load": "x"})


def test_memo_by_reads_builds_what_the_builder_builds():
    parser = option_parser("queue")
    model = MemoByReads(build_model)
    for point in _points(300, seed=1):
        args = parser.parse_args(point_argv(parser, point))
        fast, slow = build_system(args, model), build_system(args)
        assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(slow)
        for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Parts were shared, not rebuilt per point.
    assert sum(len(v) for v in model.entries.values()) < 300


def test_memo_by_reads_keys_on_what_was_read():
    calls = []

    def f(args):
        calls.append(1)
        return args.a * 10 if args.a > 0 else args.b

    memo = MemoByReads(f)
    ns = argparse.Namespace
    assert memo(ns(a=1, b=5, c=0)) == 10
    assert memo(ns(a=1, b=6, c=1)) == 10  # b and c are not read when a > 0
    assert len(calls) == 1
    assert memo(ns(a=0, b=6, c=1)) == 6
    assert memo(ns(a=0, b=7, c=1)) == 7  # b is read when a <= 0
    assert len(calls) == 3


def test_grid_of_a_thousand_points_builds_few_parts():
    points = expand({"load": [str(x) for x in np.linspace(0.5, 0.9, 32)],
                     "sigma": [str(s) for s in np.linspace(0, 2, 32)]},
                    base={"policy": "sprpt", "predictor": "lognormal"})
    parser = option_parser("queue")
    parse = PointParser(parser, lambda p: point_argv(parser, p))
    model = MemoByReads(build_model)
    for point in points:
        build_system(parse(point), model)
    assert sum(len(v) for v in model.entries.values()) == 32  # one per sigma
    assert len(parse.values) == 62  # 31 further loads and 31 further sigmas
