#!/usr/bin/env python3
"""Write base/prometheusrule.yaml (Prometheus Operator) from serving/prometheus/rules.yml.

SMR's recording and alerting rules are defined once, in serving/prometheus/rules.yml; the
PrometheusRule object carries the same groups for clusters where the Prometheus Operator loads
rules. Run after changing rules.yml:

    python deploy/kubernetes/sync_prometheusrule.py

tests/deploy fails while the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "serving" / "prometheus" / "rules.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from serving/prometheus/rules.yml by deploy/kubernetes/sync_prometheusrule.py; do not
# edit here. SMR's recording rules and alerts for the Prometheus Operator (same groups, same
# expressions). Your Prometheus must select this object (kube-prometheus-stack: add the label
# `release: <its release name>`).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks and folded ones as folded blocks, as in rules.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value.rstrip("\n") else ">" if value.endswith("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(rules_text: str) -> str:
    groups = yaml.safe_load(rules_text)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "smr-rules", "labels": {"app.kubernetes.io/part-of": "smr"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def main() -> int:
    TARGET.write_text(render(RULES.read_text()))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
