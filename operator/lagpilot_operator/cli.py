"""The `lagpilot` command: `simulate`, `crds`, `operator` and `peering-wait` subcommands."""

from __future__ import annotations

import sys

USAGE = """usage: lagpilot <command> [options]

commands:
  simulate   replay a traffic trace through Lagpilot's policies and a KEDA-equivalent one
  crds       print, write or check the KafkaConsumerGroup CRD generated from the models
  operator   run the operator (kopf run) against the current kubeconfig context
  peering-wait
             wait until the operator replicas starting together have announced themselves in the
             kopf peering (the Helm chart runs it before `kopf run`)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    # Imports stay inside each branch: `lagpilot simulate` must not pay for kopf or the Kubernetes client.
    if command == "simulate":
        from lagpilot_operator.core import simulate

        return simulate.main(rest)
    if command == "crds":
        from lagpilot_operator.kube import crdgen

        return crdgen.main(rest)
    if command == "operator":
        from kopf.cli import main as kopf_main

        sys.argv = ["kopf", "run", "-m", "lagpilot_operator.handlers", *(rest or ["--standalone", "--all-namespaces"])]
        kopf_main()
        return 0
    if command == "peering-wait":
        from lagpilot_operator.kube import peering_wait

        return peering_wait.main(rest)
    print(f"lagpilot: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
