"""LLM request workloads: synthetic presets and trace files.

A request is an arrival time, a prompt of P tokens and an output of O tokens (hidden from the
scheduler), optionally with a predicted output length given by the trace.

Synthetic presets are fitted to the public Azure LLM inference traces (2023): token counts are
lognormal, log P ~ N(mu, sigma^2), rounded to the nearest integer and at least 1.

    preset               prompt mu / sigma   output mu / sigma   arrivals
    azure-conversation   6.633 / 0.985       5.019 / 0.859       Poisson, about 5.5 requests/s
    azure-code           6.999 / 1.360       2.788 / 0.847       bursty: gamma gaps, CV about 13

Trace files (`read_trace`):

* CSV with a header: `arrival_time,prompt_tokens,output_tokens[,predicted_output_tokens]`;
* JSON lines as written by the vLLM benchmark: `{"arrival_time": .., "input_toks": ..,
  "output_toks": ..}` per line (other keys are ignored; the CSV names are accepted too).

Arrival times are seconds on the file's own clock (possibly wall-clock epochs), non-decreasing.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_positive
from jaxq.arrivals import Arrivals, Poisson, Renewal
from jaxq.distributions import Distribution, Exponential, Lognormal


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Trace:
    """N requests in arrival order."""

    arrival_time: np.ndarray  # (N,) float64 seconds on the file's clock, non-decreasing
    prompt_tokens: np.ndarray  # (N,) int64 >= 1
    output_tokens: np.ndarray  # (N,) int64 >= 1
    predicted_output_tokens: np.ndarray | None  # (N,) float64 >= 0, if the file has them
    source: str  # the file it was read from
    line: np.ndarray | None = None  # (N,) int, each request's line in that file
    # Tool calls (set programmatically; trace files carry none): (N, M) each, as in
    # jaxq.llm.engine.Requests (pause_at 0: no more calls).
    pause_at: np.ndarray | None = None
    pause_seconds: np.ndarray | None = None
    pause_predicted: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.arrival_time.shape[0])


_ALIASES = {"arrival_time": ("arrival_time",),
            "prompt_tokens": ("prompt_tokens", "input_toks"),
            "output_tokens": ("output_tokens", "output_toks"),
            "predicted_output_tokens": ("predicted_output_tokens",)}
_REQUIRED = ("arrival_time", "prompt_tokens", "output_tokens")


def _rows(path: str):
    """(line number, dict) for each request in the file."""
    if path.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TraceError(f"{path}:{number}: not a JSON object ({err.msg})") from None
                if not isinstance(row, dict):
                    raise TraceError(f"{path}:{number}: not a JSON object")
                yield number, row
        return
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise TraceError(f"{path}: empty file; expected a header line "
                             f"arrival_time,prompt_tokens,output_tokens[,predicted_output_tokens]")
        for row in reader:
            yield reader.line_num, row


def _field(path, number, row, name, required=True):
    for key in _ALIASES[name]:
        if key in row and row[key] not in (None, ""):
            value = row[key]
            break
    else:
        if not required:
            return None
        raise TraceError(f"{path}:{number}: missing column {name!r} "
                         f"(accepted names: {', '.join(_ALIASES[name])})")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{number}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise TraceError(f"{path}:{number}: {name} must be finite and >= 0, got {value!r}")
    return value


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a request trace (CSV or JSON lines, see the module docstring), checking every line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file")
    times, prompts, outputs, predictions, lines = [], [], [], [], []
    for number, row in _rows(path):
        t = _field(path, number, row, "arrival_time")
        if times and t < times[-1]:
            raise TraceError(f"{path}:{number}: arrival_time {t!r} is earlier than the line "
                             f"before ({times[-1]!r}); arrival times must be non-decreasing")
        tokens = []
        for name in ("prompt_tokens", "output_tokens"):
            v = _field(path, number, row, name)
            if v < 1 or v != int(v):
                raise TraceError(f"{path}:{number}: {name} must be an integer >= 1, got {v!r}")
            tokens.append(int(v))
        predicted = _field(path, number, row, "predicted_output_tokens", required=False)
        if predictions and (predicted is None) != (predictions[-1] is None):
            raise TraceError(f"{path}:{number}: predicted_output_tokens must be given on every "
                             f"line or on none")
        times.append(t)
        prompts.append(tokens[0])
        outputs.append(tokens[1])
        predictions.append(predicted)
        lines.append(number)
    if not times:
        raise TraceError(f"{path}: no requests")
    return Trace(
        arrival_time=np.asarray(times, dtype=np.float64),
        prompt_tokens=np.asarray(prompts, dtype=np.int64),
        output_tokens=np.asarray(outputs, dtype=np.int64),
        predicted_output_tokens=(None if predictions[0] is None
                                 else np.asarray(predictions, dtype=np.float64)),
        source=path, line=np.asarray(lines))


def lognormal_tokens(mu: float, sigma: float) -> Lognormal:
    """The lognormal law with log X ~ N(mu, sigma^2) (jaxq's Lognormal is set by its mean)."""
    return Lognormal(sigma=sigma, mean=math.exp(mu + 0.5 * sigma**2))


class ToolCalls(eqx.Module):
    """Requests that pause for tool calls (augmented LLMs): each request draws `calls` call
    positions uniformly among its output tokens 1 .. O - 1 (each kept with probability
    `probability`; positions that coincide count once), and each call lasts a time drawn from
    `seconds`. Calls are predicted with the system's predictor (its multiplier on the time)."""

    calls: int = eqx.field(static=True)
    probability: jax.Array
    seconds: Distribution

    def __init__(self, calls: int = 1, probability=1.0, seconds: Distribution | None = None):
        if not isinstance(calls, int) or calls < 1:
            raise ValueError(f"calls must be an integer >= 1, got {calls!r}")
        self.calls = calls
        self.probability = jnp.asarray(probability, dtype=float)
        self.seconds = Exponential(1.0) if seconds is None else seconds

    def __check_init__(self):
        p = self.probability
        if not isinstance(p, jax.core.Tracer) and np.any((np.asarray(p) < 0)
                                                           | (np.asarray(p) > 1)):
            raise ValueError(f"probability must lie in [0, 1], got {np.asarray(p)}")

    def sample(self, key: jax.Array, output) -> tuple[jax.Array, jax.Array]:
        """(pause_at, seconds), each (n, calls), for requests of `output` tokens ((n,)):
        positions increasing along each row, 0 where a call is absent (after the present ones)."""
        k_at, k_keep, k_seconds = jax.random.split(key, 3)
        n = output.shape[0]
        u = jax.random.uniform(k_at, (n, self.calls))
        at = jnp.sort(1 + jnp.floor(u * (output[:, None] - 1)).astype(jnp.int32), axis=1)
        keep = jax.random.uniform(k_keep, (n, self.calls)) < self.probability
        repeat = jnp.concatenate([jnp.zeros((n, 1), bool), at[:, 1:] == at[:, :-1]], axis=1)
        keep &= ~repeat & (output[:, None] >= 2)
        big = jnp.iinfo(jnp.int32).max
        at = jnp.sort(jnp.where(keep, at, big), axis=1)
        at = jnp.where(at == big, 0, at)
        return at, self.seconds.sample(k_seconds, (n, self.calls))


class LLMWorkload(eqx.Module):
    """Synthetic requests: token counts from two laws (rounded, at least 1) and an arrival
    process at `rate` requests per second. Fields are arrays, so a batch of workloads (say, a
    sweep of rates) is one module with a leading batch axis.

    max_tokens (optional) is a context limit, like a serving engine's max_model_len: a prompt is
    cut to max_tokens - 1 tokens and the output to what the context leaves, P + O <= max_tokens.
    Without it, the lognormal tails occasionally draw a request that no KV cache holds, and the
    engine refuses the workload."""

    prompt: Distribution
    output: Distribution
    arrivals: Arrivals
    rate: jax.Array  # () or (batch,) requests per second
    max_tokens: int | None = eqx.field(static=True, default=None)
    tool_calls: ToolCalls | None = None

    def __check_init__(self):
        check_positive("rate", self.rate)
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 2):
            raise ValueError(f"max_tokens must be an integer >= 2, got {self.max_tokens!r}")

    def sample(self, key: jax.Array, n: int):
        """(gaps, prompt tokens, output tokens), each (n,) float: the tokens are integers >= 1."""
        k_gap, k_prompt, k_output = jax.random.split(key, 3)
        tokens = lambda law, k: jnp.maximum(jnp.round(law.sample(k, (n,))), 1.0)  # noqa: E731
        prompt, output = tokens(self.prompt, k_prompt), tokens(self.output, k_output)
        if self.max_tokens is not None:
            prompt = jnp.minimum(prompt, self.max_tokens - 1)
            output = jnp.minimum(output, self.max_tokens - prompt)
        return self.arrivals.gaps(k_gap, (n,), self.rate), prompt, output


def _azure_conversation(rate=5.5, max_tokens=None, tool_calls=None):
    return LLMWorkload(prompt=lognormal_tokens(6.633, 0.985),
                       output=lognormal_tokens(5.019, 0.859), arrivals=Poisson(),
                       rate=jnp.asarray(rate, dtype=float), max_tokens=max_tokens,
                       tool_calls=tool_calls)


def _azure_code(rate, max_tokens=None, tool_calls=None):
    return LLMWorkload(prompt=lognormal_tokens(6.999, 1.360),
                       output=lognormal_tokens(2.788, 0.847), arrivals=Renewal(cv=13.0),
                       rate=jnp.asarray(rate, dtype=float), max_tokens=max_tokens,
                       tool_calls=tool_calls)


# name -> constructor taking the rate (requests/s) and an optional max_tokens (context limit);
# azure-conversation defaults to its trace's rate
WORKLOADS = {"azure-conversation": _azure_conversation, "azure-code": _azure_code}
