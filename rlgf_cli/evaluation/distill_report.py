"""The report of ``rlgf distill``: guide and learner side by side (the shape of the paper's Table 3)."""

from __future__ import annotations

from rlgf_cli.evaluation.report import fmt, markdown_table, metric_columns, short_labels


def row(name: str, spec: str, result: dict) -> dict:
    return {"name": name, "policy": spec, "decoding": result["decoding"], "n": result["n"],
            "metrics": result["metrics"]}


def table(report: dict, short: bool = False) -> tuple[list[str], list[list[str]]]:
    names = metric_columns((r["metrics"] for r in report["rows"]), report.get("metric_names", ()))
    labels = short_labels([r["policy"] for r in report["rows"]]) if short else {}
    columns = ["", "policy", "decoding", *names]
    rows = [[r["name"], labels.get(r["policy"], r["policy"]), r["decoding"], *[fmt(r["metrics"].get(m)) for m in names]]
            for r in report["rows"]]
    return columns, rows


def facts(report: dict) -> list[str]:
    """What the guide cost and what the learner learned from, as Markdown bullet lines."""
    lines = []
    c = report.get("collection") or {}
    if c:
        lines.append(f"- collected {c['completions']} guide completions of {c['prompts']} training prompts "
                     f"({c['samples_per_prompt']} per prompt; {c['prompts_planned']} planned)")
        keep = f"best {c['keep_top']} per prompt by reward" if c.get("keep_top") else "every non-empty completion"
        lines.append(f"- kept {c['kept']} for BC ({keep}); mean reward {fmt(c['reward_mean_all'])} collected, "
                     f"{fmt(c['reward_mean_kept'])} kept")
        if c.get("budget_exhausted"):
            lines.append(f"- **the guide budget ran out during collection**; BC used what was collected ({c['stopped']})")
    g = report.get("guide_total")
    if g:
        budget = report.get("guide_budget_tokens")
        spent = f"{g['total_tokens']} guide tokens ({g['prompt_tokens']} prompt + {g['completion_tokens']} completion)"
        lines.append(f"- spent {spent}" + (f" of a {budget}-token budget" if budget else "")
                     + f"; {g['api_completions']} completions from the API, {g['cache_hits']} from the cache"
                     + (f"; ${g['cost_usd']}" if g.get("cost_usd") is not None else ""))
    bc = report.get("bc")
    if bc:
        loss = bc.get("last", {}).get("bc_loss")
        lines.append(f"- BC: {bc['iterations']} iteration{'s' if bc['iterations'] != 1 else ''} on {bc['examples']} examples"
                     + (f", final loss {fmt(loss)}" if loss is not None else "") + f" → {bc['final']}")
    then = report.get("then")
    if then:
        if then.get("skipped"):
            lines.append(f"- {then['alg']}: skipped ({then['skipped']})")
        else:
            stats = then.get("guide_stats") or {}
            extra = f", {stats.get('total_tokens', 0)} more guide tokens" if stats else ""
            stop = f"; stopped early: {then['stopped']}" if then.get("stopped") else ""
            n = then["iterations"]
            if n:
                lines.append(f"- {then['alg']}: {n} iteration{'s' if n != 1 else ''} from the BC model{extra}{stop}"
                             f" → {then['final']}")
            else:
                lines.append(f"- {then['alg']}: no iteration completed{stop} (no row: it is the BC model)")
    return lines


def report_markdown(report: dict) -> str:
    columns, rows = table(report)
    title = f"## {report['task']} · guide {report['guide']} distilled into {report['learner']}"
    sub = f"{report['split']} split, n={report['n']}"
    body = [title, "", sub, "", markdown_table(columns, rows, align_right_from=3), "", *facts(report)]
    return "\n".join(body) + "\n"
