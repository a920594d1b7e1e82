"""Draw one rollout tree so a person can see what the allocator did: which turn-level prefixes were
branched, the predictor's estimate at each anchor it scored (``node.meta["p_hat"]``), and the
outcome of every leaf. Two outputs: a PNG (matplotlib) and a self-contained HTML page with an SVG
whose nodes show the full turn text on hover.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ..tree import ROOT, LeafStatus, Node, RolloutTree

_QUERY = re.compile(r'"query_list": \[(.*?)\]')
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
_BOXED = "\\boxed{"
GREEN, RED, GREY, BLUE = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"


def _call_label(raw: str) -> str:
    """``name(value)`` or ``name(k=v, ...)`` for one hermes tool call (the raw JSON if unparsable)."""
    try:
        call = json.loads(raw)
        name, args = call["name"], call.get("arguments") or {}
    except (ValueError, KeyError, TypeError):
        return raw
    if not isinstance(args, dict):
        return f"{name}({args})"
    if len(args) == 1:
        (value,) = args.values()
        return f"{name}({value if isinstance(value, str) else json.dumps(value)})"
    return f"{name}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items()) + ")"


def turn_label(node: Node, width: int = 22) -> str:
    """A short name for a turn: ``search: X``, ``answer: X``, the tool calls as ``name(args)``,
    or the start of its text."""
    text = node.text or ""
    if (m := _ANSWER.search(text)) is not None:
        label = f"answer: {m[1].strip()}"
    elif (m := _QUERY.search(text)) is not None:
        label = "search: " + ", ".join(q.strip().strip('"') for q in m[1].split('",'))
    elif calls := _CALL.findall(text):
        label = "; ".join(_call_label(c) for c in calls).replace("\n", " ")
    elif _BOXED in text:
        label = "answer: " + text[text.rindex(_BOXED) + len(_BOXED):].split("}", 1)[0]
    else:
        label = text.strip().replace("\n", " ") or "(empty)"
    return label if len(label) <= width else label[: width - 1] + "…"


def layout(tree: RolloutTree) -> dict[int, tuple[float, int]]:
    """(x, depth) per node: leaves spaced evenly in depth-first order, parents centred above."""
    pos: dict[int, tuple[float, int]] = {}
    next_x = [0.0]

    def place(u: int) -> float:
        node = tree[u]
        if not node.children:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(c) for c in node.children]
            x = (min(xs) + max(xs)) / 2.0
        pos[u] = (x, node.depth)
        return x

    place(ROOT)
    return pos


def _colour(node: Node, threshold: float) -> str:
    if not node.terminal:
        return BLUE if len(node.children) >= 2 and node.node_id != ROOT else "#ffffff"
    if node.status is LeafStatus.FAILED or node.reward is None:
        return GREY
    return GREEN if node.reward >= threshold else RED


def _p_hat(node: Node) -> str:
    return f"p̂={node.meta['p_hat']:.2f}" if "p_hat" in node.meta else ""


def _outcome(node: Node) -> str:
    if not node.terminal:
        return ""
    if node.status is LeafStatus.FAILED or node.reward is None:
        return "failed"
    return f"r={node.reward:g}" + (" (trunc)" if node.status is LeafStatus.TRUNCATED else "")


def save_png(tree: RolloutTree, path: Path, title: str = "", threshold: float = 0.5) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = layout(tree)
    n_leaves = max(1, sum(1 for n in tree.nodes if not n.children))
    depth = max(d for _, d in pos.values())
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * n_leaves), 1.6 + 1.35 * (depth + 1)))
    for node in tree.nodes[1:]:
        (x0, y0), (x1, y1) = pos[node.parent], pos[node.node_id]
        ax.plot([x0, x1], [-y0, -y1], color="#607d8b", lw=1.0, zorder=1)
    for node in tree.nodes:
        x, d = pos[node.node_id]
        branched = len(node.children) >= 2 and node.node_id != ROOT
        ax.scatter([x], [-d], s=260 if branched else 170, c=_colour(node, threshold), edgecolors="black",
                   linewidths=2.2 if branched else 0.8, zorder=2)
        label = "prompt" if node.node_id == ROOT else turn_label(node)
        extra = " ".join(filter(None, [_p_hat(node), _outcome(node)]))
        ax.annotate(label + (f"\n{extra}" if extra else ""), (x, -d), xytext=(0, -17), textcoords="offset points",
                    ha="center", va="top", fontsize=7.5)
    ax.set_title((title or f"rollout tree {tree.uid}") + "\np̂: the predictor's success estimate when the allocator "
                 "scored the anchor; r: the leaf's reward", fontsize=9)
    ax.set_xlim(-0.8, n_leaves - 0.2)
    ax.set_ylim(-depth - 0.9, 0.5)
    ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black", label=lab)
               for c, lab in [(GREEN, "leaf, success"), (RED, "leaf, failure"), (BLUE, "branched prefix"),
                              ("#ffffff", "turn / root")]]
    ax.legend(handles=handles, loc="lower right", fontsize=7, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_html(tree: RolloutTree, path: Path, title: str = "", threshold: float = 0.5) -> Path:
    """A self-contained page: the tree as SVG (hover a node for its full turn text and
    observation) and the same data as JSON at the bottom."""
    pos = layout(tree)
    dx, dy, pad = 150, 95, 70
    width = int(pad * 2 + dx * max(x for x, _ in pos.values()))
    height = int(pad * 2 + dy * max(d for _, d in pos.values()))

    def xy(u: int) -> tuple[float, float]:
        x, d = pos[u]
        return pad + dx * x, pad / 2 + dy * d

    parts = []
    for node in tree.nodes[1:]:
        (x0, y0), (x1, y1) = xy(node.parent), xy(node.node_id)
        parts.append(f'<line x1="{x0:.0f}" y1="{y0:.0f}" x2="{x1:.0f}" y2="{y1:.0f}" stroke="#607d8b"/>')
    for node in tree.nodes:
        x, y = xy(node.node_id)
        branched = len(node.children) >= 2 and node.node_id != ROOT
        tip = tree.prompt_text if node.node_id == ROOT else f"{node.text}\n--- observation ---\n{node.obs_text}"
        label = "prompt" if node.node_id == ROOT else turn_label(node)
        extra = " ".join(filter(None, [_p_hat(node), _outcome(node)]))
        parts.append(
            f'<g><title>{html.escape(tip)}</title>'
            f'<circle cx="{x:.0f}" cy="{y:.0f}" r="{11 if branched else 8}" fill="{_colour(node, threshold)}" '
            f'stroke="black" stroke-width="{3 if branched else 1}"/>'
            f'<text x="{x:.0f}" y="{y + 24:.0f}" font-size="11" text-anchor="middle">{html.escape(label)}</text>'
            f'<text x="{x:.0f}" y="{y + 37:.0f}" font-size="10" text-anchor="middle" fill="#37474f">'
            f"{html.escape(extra)}</text></g>"
        )
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(width, 400)}" height="{height + 30}" '
           f'font-family="sans-serif">{"".join(parts)}</svg>')
    legend = (f'<p><span style="color:{GREEN}">●</span> success leaf &nbsp; <span style="color:{RED}">●</span> '
              f'failure leaf &nbsp; <span style="color:{BLUE}">●</span> branched turn-level prefix (thick border) '
              "&nbsp; p̂ = the predictor's success estimate when the allocator scored the anchor. "
              "Hover a node for its full text.</p>")
    data = html.escape(json.dumps(tree_summary(tree), indent=1))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or tree.uid)}</title></head>"
            f"<body style='font-family:sans-serif'><h3>{html.escape(title or tree.uid)}</h3>"
            f"<p>{html.escape(tree.prompt_text)}</p>{legend}{svg}<details><summary>tree data</summary><pre>{data}</pre>"
            "</details></body></html>")
    path = Path(path)
    path.write_text(page)
    return path


def tree_summary(tree: RolloutTree) -> list[dict]:
    """Per node: parent, label, children, p_hat, outcome (what the pictures show, as data)."""
    return [{"node": n.node_id, "parent": n.parent, "depth": n.depth,
             "label": "prompt" if n.node_id == ROOT else turn_label(n, 60), "children": list(n.children),
             "p_hat": n.meta.get("p_hat"), "reward": n.reward, "status": None if n.status is None else n.status.value}
            for n in tree.nodes]


def pick_tree(trees: dict[str, RolloutTree]) -> RolloutTree | None:
    """The most instructive tree of a step: one that shows a tool call and its observation (a
    half-trained policy's malformed calls get none), branched below the root, mixed outcomes,
    predictor estimates present; ties go to the smaller tree (easier to read)."""
    def score(t: RolloutTree) -> tuple:
        leaves = t.leaves()
        rewards = {n.reward for n in leaves if n.reward is not None}
        branched = sum(1 for n in t.nodes[1:] if len(n.children) >= 2)
        has_p = sum(1 for n in t.nodes if "p_hat" in n.meta)
        tool_use = any(n.tool_calls and n.obs_text for n in t.nodes[1:])
        return (tool_use, branched > 0, len(rewards) > 1, has_p > 1, -len(t.nodes))

    return max(trees.values(), key=score) if trees else None
