"""Load benchmark of the retrieval server: throughput, latency, errors and memory under concurrent clients.

    nice python benchmarks/retrieval_load.py                      # mini corpus + 1M generated, 300 s soak
    python benchmarks/retrieval_load.py --corpora mini --seconds-per-level 5 --soak-seconds 0   # quick look

For each corpus (the shipped mini corpus; a generated one of ``--num-passages`` passages, written
on the fly with progress) it starts the real server (``python -m verl_trace.tools.retrieval_server``,
BM25), then drives it with 1, 16, 64 and 256 concurrent asyncio clients for
``--seconds-per-level`` each. A client sends one search request after another, one query per
request (what the search tool does for a one-query call), queries drawn at random (seeded) from
passage titles (entity names, as the agent issues them) and, for the generated corpus, a quarter
of 5-word queries drawn from the text. The server's RSS is sampled every second throughout; a
soak at ``--soak-concurrency`` clients for ``--soak-seconds`` on the largest corpus checks for
memory growth. Results go to JSON and a plot; ``docs/benchmarks.md`` has the table.

Client and server share the machine's cores, so throughput here is a lower bound for a server on
its own node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil
from tqdm import tqdm

from verl_trace.tools.retrieval_server.process import RetrievalServerProcess

ROOT = Path(__file__).resolve().parents[1]
MINI_CORPUS = ROOT / "recipes" / "search_r1" / "data" / "mini" / "corpus.jsonl"
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def synthetic_vocab(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def generate_corpus(path: Path, n: int, seed: int, vocab_size: int = 200_000) -> None:
    """``n`` passages: a two-word title (uniform over the vocabulary, like entity names) and
    15-40 words of Zipf-distributed text, in Search-R1's JSONL form."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    vocab = np.array(synthetic_vocab(vocab_size, rng), dtype=object)
    ranks = np.arange(1, vocab_size + 1)
    weights = 1.0 / ranks**1.05
    weights /= weights.sum()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for start in tqdm(range(0, n, 10_000), desc=f"generate {n:,} passages", unit_scale=10_000):
            m = min(10_000, n - start)
            titles = vocab[np_rng.integers(0, vocab_size, size=(m, 2))]
            lengths = np_rng.integers(15, 41, size=m)
            words = vocab[np_rng.choice(vocab_size, size=int(lengths.sum()), p=weights)]
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i in range(m):
                title = " ".join(titles[i]).title()
                text = " ".join(words[offsets[i]:offsets[i + 1]])
                fh.write(json.dumps({"id": f"g{start + i}", "contents": f'"{title}"\n{title} {text}.'}) + "\n")
    tmp.rename(path)


def sample_queries(corpus: Path, k: int, seed: int, text_fraction: float) -> list[str]:
    """``k`` queries from the corpus: titles, and (a ``text_fraction`` of them) 5-word text spans."""
    rng = random.Random(seed)
    with open(corpus, "rb") as fh:
        size = fh.seek(0, 2)
        queries = []
        while len(queries) < k:
            fh.seek(rng.randrange(size))
            fh.readline()
            line = fh.readline()
            if not line:
                continue
            title, _, text = json.loads(line)["contents"].partition("\n")
            words = text.split()
            if rng.random() < text_fraction and len(words) > 8:
                i = rng.randrange(2, len(words) - 5)
                queries.append(" ".join(words[i:i + 5]).rstrip("."))
            else:
                queries.append(title.strip('"'))
    return queries


@dataclass
class ServerRun:
    """The server process, with a thread sampling its RSS every second."""

    corpus: Path
    index_dir: Path
    nice: int
    rss: list[tuple[float, float, float]] = field(default_factory=list)  # (s since start, RSS, anonymous) MiB

    def __post_init__(self):
        # index building for a million passages takes minutes; its progress bar goes to stderr
        self.server = RetrievalServerProcess(self.corpus, None, index_dir=self.index_dir,
                                             extra_args=["--max-queries", "4096"], prefix=["nice", "-n", str(self.nice)],
                                             startup_timeout=3 * 3600).start()
        self.url, self.proc = self.server.url, self.server.proc
        self.startup_s = self.server.startup_seconds
        self._stop = threading.Event()
        self._ps = psutil.Process(self.proc.pid)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            try:
                infos = [p.memory_info() for p in [self._ps, *self._ps.children(recursive=True)]]
            except psutil.Error:
                return
            rss = sum(i.rss for i in infos)
            anon = sum(i.rss - i.shared for i in infos)  # minus file-backed pages (the mmapped corpus)
            self.rss.append((time.monotonic() - self._t0, rss / 2**20, anon / 2**20))
            if self._stop.wait(1.0):
                return

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.stop()


async def _post_aiohttp(session, url: str, body: dict) -> str | None:
    async with session.post(url, json=body) as resp:
        data = await resp.json() if resp.status == 200 else None
        return None if data and len(data["result"]) == 1 else f"HTTP {resp.status}"


async def _post_httpx(client, url: str, body: dict) -> str | None:
    resp = await client.post(url, json=body)
    return None if resp.status_code == 200 and len(resp.json()["result"]) == 1 else f"HTTP {resp.status_code}"


async def drive(url: str, queries: list[str], clients: int, seconds: float, seed: int, topk: int = 3,
                library: str = "aiohttp") -> dict:
    """``clients`` concurrent loops of POST /retrieve for ``seconds``; latency of each request."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    if library == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                        timeout=aiohttp.ClientTimeout(total=120))
        post = _post_aiohttp
    else:
        session = httpx.AsyncClient(limits=httpx.Limits(max_connections=clients), timeout=120)
        post = _post_httpx

    async def client(i: int) -> None:
        rng = random.Random(f"{seed}:{i}")
        while time.monotonic() < deadline:
            body = {"queries": [rng.choice(queries)], "topk": topk, "return_scores": True}
            start = time.perf_counter()
            try:
                kind = await post(session, f"{url}/retrieve", body)
            except Exception as exc:  # any failure is counted, by kind
                kind = type(exc).__name__
            if kind:
                errors[kind] = errors.get(kind, 0) + 1
            else:
                latencies.append(time.perf_counter() - start)

    async with session:
        start = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.monotonic() - start
    lat = np.array(latencies) * 1000
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies),
            "throughput_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "errors": sum(errors.values()), "error_kinds": errors}


def soak_summary(rss: list[tuple[float, float, float]], start: float, end: float) -> dict:
    """RSS and anonymous memory over the soak; the anonymous trend (MiB/min) is the leak indicator,
    RSS also counts corpus pages the mmap has touched (file cache, reclaimable)."""
    t, total, anon = np.array([row for row in rss if start <= row[0] <= end]).T
    slope = float(np.polyfit(t, anon, 1)[0]) * 60 if len(t) > 2 else float("nan")
    return {"rss_start_mib": round(float(total[:5].mean()), 1), "rss_end_mib": round(float(total[-5:].mean()), 1),
            "anon_start_mib": round(float(anon[:5].mean()), 1), "anon_end_mib": round(float(anon[-5:].mean()), 1),
            "anon_max_mib": round(float(anon.max()), 1), "anon_slope_mib_per_min": round(slope, 2)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for res in results:
        levels = res["levels"]
        clients = [lv["clients"] for lv in levels]
        label = f"{res['corpus']} ({res['passages']:,} passages)"
        axes[0].plot(clients, [lv["throughput_rps"] for lv in levels], "o-", label=label)
        axes[1].plot(clients, [lv["p50_ms"] for lv in levels], "o-", label=f"p50 {res['corpus']}")
        axes[1].plot(clients, [lv["p99_ms"] for lv in levels], "s--", label=f"p99 {res['corpus']}")
        t, total, anon = zip(*res["rss"]) if res["rss"] else ((), (), ())
        line, = axes[2].plot([x / 60 for x in t], total, label=f"RSS {res['corpus']}")
        axes[2].plot([x / 60 for x in t], anon, "--", color=line.get_color(), label=f"anonymous {res['corpus']}")
        if res.get("soak"):
            axes[2].axvspan(res["soak"]["start_s"] / 60, res["soak"]["end_s"] / 60, alpha=0.15)
    axes[0].set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="Throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="Latency")
    axes[2].set(xlabel="minutes since server start", ylabel="server memory (MiB)", title="Memory (soak shaded)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(results: list[dict]) -> str:
    lines = ["| corpus | passages | client | clients | req/s | p50 ms | p99 ms | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for res in results:
        for lv in res["levels"]:
            lines.append(f"| {res['corpus']} | {res['passages']:,} | {res['client']} | {lv['clients']} | "
                         f"{lv['throughput_rps']} | "
                         f"{lv['p50_ms']} | {lv['p99_ms']} | {lv['errors']} |")
    for res in results:
        lines.append("")
        lines.append(f"{res['corpus']}: server ready in {res['startup_s']:.0f} s "
                     f"(index {'loaded' if res['index_reused'] else 'built'}); after start RSS "
                     f"{res['rss_after_start_mib']} MiB, anonymous {res['anon_after_start_mib']} MiB.")
        if res.get("soak"):
            s = res["soak"]
            lines.append(f"soak: {s['clients']} clients for {s['seconds']} s, {s['requests']:,} requests, "
                         f"{s['errors']} errors, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; anonymous memory "
                         f"{s['anon_start_mib']} -> {s['anon_end_mib']} MiB (max {s['anon_max_mib']}, trend "
                         f"{s['anon_slope_mib_per_min']} MiB/min); RSS {s['rss_start_mib']} -> {s['rss_end_mib']} MiB.")
    return "\n".join(lines)


def run_corpus(name: str, corpus: Path, queries: list[str], args, soak: bool) -> dict:
    index_dir = args.work_dir / f"index-{name}"
    reused = (index_dir / "meta.json").is_file()
    server = ServerRun(corpus, index_dir, args.nice)
    result = {"corpus": name, "passages": httpx.get(f"{server.url}/health").json()["num_docs"],
              "startup_s": server.startup_s, "index_reused": reused, "client": args.client, "levels": []}
    try:
        while not server.rss:
            time.sleep(0.05)
        result["rss_after_start_mib"] = round(server.rss[0][1], 1)
        result["anon_after_start_mib"] = round(server.rss[0][2], 1)
        warmup = min(2.0, args.seconds_per_level)
        asyncio.run(drive(server.url, queries, 4, warmup, args.seed, library=args.client))
        for clients in args.levels:
            level = asyncio.run(drive(server.url, queries, clients, args.seconds_per_level, args.seed,
                                      library=args.client))
            print(json.dumps({"corpus": name, **level}), file=sys.stderr)
            result["levels"].append(level)
        if soak and args.soak_seconds > 0:
            start = server.now()
            level = asyncio.run(drive(server.url, queries, args.soak_concurrency, args.soak_seconds, args.seed + 1,
                                      library=args.client))
            result["soak"] = {**level, "start_s": start, "end_s": server.now(),
                              **soak_summary(server.rss, start, server.now())}
            print(json.dumps({"corpus": name, "soak": result["soak"]}), file=sys.stderr)
    finally:
        server.stop()
    result["rss"] = server.rss
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", default="mini,generated", help="comma list of: mini, generated")
    p.add_argument("--num-passages", type=int, default=1_000_000)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    p.add_argument("--seconds-per-level", type=float, default=20.0)
    p.add_argument("--soak-seconds", type=float, default=300.0)
    p.add_argument("--soak-concurrency", type=int, default=64)
    p.add_argument("--num-queries", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="client library of the load generator (httpx to reproduce its pool collapse)")
    p.add_argument("--nice", type=int, default=10, help="niceness of the server process")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/verl_trace_retrieval_bench"),
                   help="generated corpus and saved indexes (reused by later runs)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_load.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "retrieval_load.png")
    args = p.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the server

    names = args.corpora.split(",")
    results = []
    for name in names:
        if name == "mini":
            corpus, text_fraction = MINI_CORPUS, 0.0
        elif name == "generated":
            corpus, text_fraction = args.work_dir / f"generated-{args.num_passages}-s{args.seed}.jsonl", 0.25
            if not corpus.is_file():
                generate_corpus(corpus, args.num_passages, args.seed)
        else:
            p.error(f"--corpora: unknown corpus {name!r}")
        queries = sample_queries(corpus, args.num_queries, args.seed, text_fraction)
        results.append(run_corpus(name, corpus, queries, args, soak=name == names[-1]))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    plot(results, args.plot)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
