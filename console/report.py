"""`airlock report --agent NAME`: what a simulated trial would have done — writes per action and
operation, money per currency, recipients, instances, deletions, what would have been blocked
or held, and the riskiest writes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from airlock.console.untrusted import shown, visible

DELETING = frozenset({"delete", "terminate", "remove", "destroy", "purge", "archive"})
TOP = 5
UNSTATED = "unstated"  # an amount whose request names no currency (a refund of a charge)


def trial_report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    money: Counter[str] = Counter()
    recipients = instances = 0
    for run in runs:
        params = run["params"] or {}
        amount, currency = params.get("amount"), params.get("currency") or UNSTATED
        blocked = _would(run) == "BLOCK"  # refused in the trial: nothing would move
        if run["category"] == "payment" and isinstance(amount, int) and not blocked:
            money[str(currency).lower()] += amount
        if run["category"] == "messaging" and run["action"] == "send_message":
            count = params.get("recipient_count")
            recipients += count if isinstance(count, int) else 1
        if run["action"] == "create_instances":
            count = params.get("instance_count")
            instances += count if isinstance(count, int) else 1
    ranked = sorted(runs, key=lambda r: -(r["risk"] or 0))[:TOP]
    return {
        "writes": len(runs),
        "by_action": dict(Counter(r["action"] for r in runs).most_common()),
        "by_operation": dict(Counter(r["operation"] for r in runs if r["operation"]).most_common()),
        "money": dict(money),  # minor units, per currency
        "recipients": recipients,
        "instances": instances,
        "deletions": sum(1 for r in runs if _deletes(r)),
        "would_block": [_brief(r) for r in runs if _would(r) == "BLOCK"],
        "would_hold": [_brief(r) for r in runs if _would(r) == "REQUIRE_APPROVAL"],
        "top_risks": [_brief(r) | {"risk": r["risk"]} for r in ranked if r["risk"]],
    }


def _would(run: dict[str, Any]) -> str | None:
    """What it would have been: a SIMULATED run's shadow decision; a run its rule held for a
    reviewer in the trial (`in_simulation: hold`) was REQUIRE_APPROVAL."""
    return run["shadow_decision"] if run["decision"] == "SIMULATED" else run["decision"]


def _deletes(run: dict[str, Any]) -> bool:
    """A DELETE, or an action named for deleting (repos_delete_release, terminate_instances)."""
    method = (run["request"] or {}).get("method")
    return method == "DELETE" or bool(DELETING & set(run["action"].split("_")))


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {"id": run["id"], "action": run["action"], "target": run["target"],
            "reason": run["reason"]}  # fmt: skip


def print_report(console: Console, agent: str, report: dict[str, Any]) -> None:
    console.print(Text.assemble((f"Simulated trial of {visible(agent)}", "bold"),
                                f": {report['writes']} writes, none sent"))  # fmt: skip
    table = Table("action", "writes")
    for action, count in report["by_action"].items():
        table.add_row(shown(action), Text(str(count)))
    console.print(table)
    if report["by_operation"]:
        console.print(
            "operations: " + ", ".join(f"{k} x{v}" for k, v in report["by_operation"].items()),
            markup=False,
        )
    money = ", ".join(
        f"{amount / 100:,.2f} {currency.upper()}" for currency, amount in report["money"].items()
    )
    console.print(f"money that would have moved: {visible(money) or 'none'}", markup=False)
    console.print(f"recipients: {report['recipients']}   instances: {report['instances']}   "
                  f"deletions: {report['deletions']}")  # fmt: skip
    for title, key in (
        ("would have been blocked", "would_block"),
        ("would have been held", "would_hold"),
    ):
        console.print(f"[bold]{title}[/]: {len(report[key])}")
        for item in report[key]:
            console.print(visible(f"  {item['action']} → {item['target']}: {item['reason']}"),
                          markup=False)  # fmt: skip
    console.print("[bold]top risks[/]")
    for item in report["top_risks"]:
        console.print(visible(f"  {item['risk']:>3}  {item['action']} → {item['target']}"),
                      markup=False)  # fmt: skip
