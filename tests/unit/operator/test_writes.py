"""What changed enough to write (`writes`): the templated Deployment, Events."""

from __future__ import annotations

import json

from lagpilot_operator.writes import EventMemory, contained, deployment_patch


def test_a_matching_deployment_is_not_patched() -> None:
    desired = {"metadata": {"labels": {"app": "w", "lagpilot.io/group": "g"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}},
                        "template": {"metadata": {"labels": {"app": "w"}},
                                     "spec": {"containers": [{"name": "worker", "image": "w:1",
                                                              "env": [{"name": "A", "value": "1"}]}]}}}}
    live = {"metadata": {"labels": {"app": "w", "lagpilot.io/group": "g", "extra": "x"}, "uid": "u"},
            "spec": {"replicas": 5, "strategy": {"type": "RollingUpdate"}, "selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}},
                                  "spec": {"dnsPolicy": "ClusterFirst",
                                           "containers": [
                                               {"name": "sidecar", "image": "s:1"},
                                               {"name": "worker", "image": "w:1", "imagePullPolicy": "IfNotPresent",
                                                "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}]}}}}
    assert deployment_patch(desired, live) is None  # defaults, other replicas, extra items: nothing to write
    changed = json.loads(json.dumps(desired))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "w:2"
    patch = deployment_patch(changed, live)
    assert patch is not None and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "w:2"
    assert deployment_patch({**desired, "metadata": {"labels": {"app": "v"}}}, live) is not None
    env_changed = json.loads(json.dumps(desired))
    env_changed["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "9"
    assert deployment_patch(env_changed, live) is not None
    assert not contained({"args": ["a", "b"]}, {"args": ["a"]}) and contained({"args": ["a"]}, {"args": ["a"]})


def test_the_same_event_is_posted_once() -> None:
    events = EventMemory()
    assert events.admit("Warning", "PartitionsStuck", "t-0")
    assert not events.admit("Warning", "PartitionsStuck", "t-0")
    assert events.admit("Normal", "ScaledUp", "t-0")  # another reason keeps its own last message
    assert events.admit("Warning", "PartitionsStuck", "t-1")
    assert events.admit("Warning", "PartitionsStuck", "t-0")  # news again once something else was said
    # one subject: up, down, and the same up again are three Events; the same up twice is one
    assert events.admit("Normal", "ScaledDown", "t-0")
    assert events.admit("Normal", "ScaledUp", "t-0")
    assert not events.admit("Normal", "ScaledUp", "t-0")


