"""Pausing a KafkaConsumerGroup: what `spec.paused` and the pause annotations ask for. Pure: no I/O.

Two ways to pause, because they serve two kinds of people:

* `spec.paused: true` is part of the desired state (GitOps: it is in the manifest).
* The annotation `lagpilot.io/paused: "true"` is the operator's handle for a person at a console
  during an incident (`kubectl annotate kcg orders lagpilot.io/paused=true`), as KEDA's
  `autoscaling.keda.sh/paused`. Annotating does not bump `metadata.generation` and does not fight
  a GitOps tool that owns the spec.
* `lagpilot.io/paused-replicas: "N"` pauses too, and pins the replicas at N (KEDA's
  `autoscaling.keda.sh/paused-replicas`); the pool stays where it is.

A value nobody can read is never silently ignored, and never guessed upwards: an unreadable
`paused` value pauses (whoever wrote it meant to stop the autoscaler), an unreadable
`paused-replicas` pauses without pinning (the replicas stay as they are). Either way the `Paused`
condition names the annotation and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PAUSED_ANNOTATION = "lagpilot.io/paused"
PAUSED_REPLICAS_ANNOTATION = "lagpilot.io/paused-replicas"
# Same bound as spec.replicas.max: a larger pin is a typo, not a wish.
MAX_PINNED_REPLICAS = 1000

# Go's strconv.ParseBool, which KEDA's annotation reader uses: the same spellings mean the same here.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True)
class Pause:
    """Whether scaling is paused, the pin if any, and the `Paused` condition that says so."""

    paused: bool
    replicas: int | None  # pinned replica count; None: hold whatever the target has
    reason: str           # the Paused condition's reason (one CamelCase word)
    message: str


NOT_PAUSED = Pause(False, None, "NotPaused", "scaling is active")


def pause_from(annotations: Mapping[str, str] | None, spec_paused: bool) -> Pause:
    """Read `spec.paused` and the two annotations (metadata.annotations may be absent)."""
    found = dict(annotations or {})
    flag = found.get(PAUSED_ANNOTATION)
    pin_text = found.get(PAUSED_REPLICAS_ANNOTATION)

    why: list[str] = []
    if spec_paused:
        why.append("spec.paused is true")
    bad_flag = flag is not None and flag.strip() not in _TRUE | _FALSE
    if flag is not None and (flag.strip() in _TRUE or bad_flag):
        why.append(f'annotation {PAUSED_ANNOTATION}="{flag}"')
    if pin_text is not None:
        why.append(f'annotation {PAUSED_REPLICAS_ANNOTATION}="{pin_text}"')
    if not why:
        return NOT_PAUSED

    pin, pin_problem = _pinned_replicas(pin_text)
    cause = " and ".join(why)
    if pin_problem is not None:
        return Pause(True, None, "InvalidPausedReplicas",
                     f"paused by {cause}, but {pin_problem}: replicas and pool are held as they are; "
                     f"set {PAUSED_REPLICAS_ANNOTATION} to a whole number from 0 to {MAX_PINNED_REPLICAS}, "
                     "or remove it")
    if bad_flag:
        return Pause(True, pin, "InvalidPausedAnnotation",
                     f'paused by {cause}: "{flag}" is neither true nor false, so scaling stays paused '
                     f"(the safe reading); write \"true\" or \"false\"")
    if pin is not None:
        return Pause(True, pin, "PausedAtReplicas",
                     f"paused by {cause}: replicas pinned at {pin}, pool held; lag is still read and reported")
    reason = "PausedBySpec" if spec_paused and len(why) == 1 else "PausedByAnnotation"
    return Pause(True, None, reason, f"paused by {cause}: replicas and pool are held as they are; "
                                     "lag is still read and reported")


def _pinned_replicas(text: str | None) -> tuple[int | None, str | None]:
    """(N, None) for a valid pin, (None, None) for no pin, (None, problem) for an unreadable one."""
    if text is None:
        return None, None
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit():
        return None, f'{PAUSED_REPLICAS_ANNOTATION}="{text}" is not a whole number'
    value = int(stripped)
    if value > MAX_PINNED_REPLICAS:
        return None, f'{PAUSED_REPLICAS_ANNOTATION}="{text}" is above {MAX_PINNED_REPLICAS}'
    return value, None
