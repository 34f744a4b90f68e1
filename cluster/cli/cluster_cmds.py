"""``pmkt cluster up | down | status``: provision, stop and check the cluster (Ansible)."""

from __future__ import annotations

import click

from cluster.cli.context import CliContext, pass_ctx
from cluster.cli.progress import console

__all__ = ["cluster_group"]


@click.group("cluster")
def cluster_group() -> None:
    """Provision, stop and check the 1-master/2-worker cluster (ansible/, docs/deploy-ansible.md)."""


@cluster_group.command("up")
@pass_ctx
def cluster_up(c: CliContext) -> None:
    """Run ansible/site.yml: HDFS, ZooKeeper, HBase, Spark and Ray, waiting for health.

    A second run changes nothing. The rendered platform settings are written where the
    inventory says (var/cluster/pmkt-cluster.yaml for the local inventory).
    """
    from cluster.provision import run_playbook

    run_playbook(c.settings, "site.yml")


@cluster_group.command("down")
@click.option("--wipe", is_flag=True, help="Also delete the cluster's data (HDFS, HBase, ZooKeeper).")
@pass_ctx
def cluster_down(c: CliContext, wipe: bool) -> None:
    """Run ansible/teardown.yml: stop every daemon and Ray process."""
    from cluster.provision import run_playbook

    run_playbook(c.settings, "teardown.yml", {"pmkt_wipe_data": "true" if wipe else "false"})


@cluster_group.command("status")
@pass_ctx
def cluster_status_cmd(c: CliContext) -> None:
    """Each daemon and its health; exits 1 when anything is not healthy."""
    from rich.table import Table

    from cluster.provision import cluster_status

    checks = cluster_status(c.settings)
    table = Table("check", "state", "detail", title=f"cluster ({c.settings.source})")
    for check in checks:
        table.add_row(check.name, "[green]ok[/green]" if check.ok else "[red]FAIL[/red]", check.detail)
    console.print(table)
    if not all(check.ok for check in checks):
        raise SystemExit(1)
