"""Scale-out: what crossing processes through PostgreSQL costs, and what a second worker buys.

One run, on a PostgreSQL cluster of its own (fsync on, as in production):
  - training jobs per hour, two `adapterd worker` processes against one, with no engine
    running, each worker pinned to its own core with one trainer thread: the same 6 jobs (the
    default SmolLM2-135M, 4 steps of 2 rows each) queued at once, timed from the first claim
    to the last success; with each job's mean time from its claim to its end, which tells
    contention between the two (a job takes longer) from gaps between jobs. The jobs are
    written to the store as a serving replica writes them (the trainer config validated by the
    trainer's own model), since no replica runs here.
  - the ceiling a second worker is measured against: the same 6 jobs run by bare trainers
    (`python -m trainer train`, as a worker starts it, with no worker or store), on core 0
    alone and then on cores 0 and 1 at once; and the machine's own scaling from one core to
    two on work bound by the core (matmuls in L2) and on work bound by memory bandwidth (a
    200 MB copy), each probe in a pinned process of its own.
  - cross-process event delay: a job claimed by this process (as a worker would), 100 events
    appended with its lease at 20 ms intervals; a client follows the job through WatchJob on a
    serving replica (another process): delay = arrival at the client - the append's commit.
  - alias propagation: this process moves an alias in the store (as another replica would,
    notification included) between two versions published to the shared root, 20 times; the
    time until the replica's ListAdapters shows the move.
  - submit latency: `create_job` on the SQLite store (synchronous=FULL) and on PostgreSQL
    (fsync on), 200 each, p50.
The last line is one JSON object; the ratios: two workers' jobs per hour over one's, two bare
trainers' over one's, two workers' over two bare trainers' (what the workers keep of what the
machine gives), the machine's two-core scaling on each probe, and SQLite's submit latency over
PostgreSQL's (above 1: PostgreSQL is faster).

    .venv/bin/python bench/scale_out.py
"""

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.children import child_result, report_child, start_child  # noqa: E402
from bench.results import report  # noqa: E402 (needs ROOT on the path)

if TYPE_CHECKING:
    from service.basemodel import BaseModel
    from service.store.base import Store

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "smollm2-135m-instruct"
JOBS = 6
EVENTS = 100
ALIAS_MOVES = 20
SUBMITS = 200
PROBE_ROUNDS = 20_000
SLICE = ROOT / "data/gsm8k/train_slice.jsonl"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def new_job(n: int, spec: dict[str, Any] | None = None) -> Any:
    from service.jobs.model import Job, JobKind, JobState, spec_digest

    spec = spec or {"n": n}
    now = time.time()
    return Job(
        id=f"job-{n:04d}-{os.urandom(4).hex()}", tenant="bench", kind=JobKind.TRAIN,
        state=JobState.QUEUED, spec=spec, spec_digest=spec_digest(spec), request_id="",
        priority=0, created=now, updated=now,
    )  # fmt: skip


def write_config(directory: Path, data: Path, model: "BaseModel") -> None:
    """A job directory's trainer config (validated by the trainer's own model), as a serving
    replica writes it: the default model, 4 steps of 2 rows, fp32."""
    from service.jobs.runner import CONFIG_FILE
    from trainer.config import load_config

    rows = data / "datasets" / "rows.jsonl"
    if not rows.exists():
        rows.parent.mkdir(parents=True, exist_ok=True)
        rows.write_text("\n".join(SLICE.read_text().splitlines()[:32]) + "\n")
    config = load_config({
        "base_model": str(model.path), "base_model_name": model.name,
        "output_dir": str(directory), "data": {"datasets": [{"path": str(rows)}]},
        "training": {"max_steps": 4, "batch_size": 2, "precision": "float32"},
    })  # fmt: skip
    directory.mkdir(parents=True)
    (directory / CONFIG_FILE).write_text(config.model_dump_json())


async def queue_training_jobs(store: "Store", data: Path, model: "BaseModel") -> list[str]:
    """JOBS training jobs, each with its trainer config in its job directory."""
    ids = []
    for n in range(JOBS):
        job = new_job(n)
        write_config(data / "jobs" / job.id, data, model)
        await store.create_job(job)
        ids.append(job.id)
    return ids


def start_worker(data: Path, url: str, core: int, log: Path) -> subprocess.Popen[bytes]:
    """`adapterd worker` pinned to `core`, one trainer thread."""
    from tests.support import free_port

    flags = [
        "--data-dir", str(data), "--store-url", url, "--base-model", MODEL,
        "--metrics-port", str(free_port()), "--trainer-threads", "1",
    ]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(
            ["taskset", "--cpu-list", str(core), sys.executable, "-m", "service", "worker", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def jobs_per_hour(
    url: str, data: Path, model: "BaseModel", cores: list[int]
) -> tuple[float, float]:
    """(jobs per hour, mean seconds from a job's claim to its end) of one worker per core in
    `cores`, over JOBS fresh jobs."""
    from service.jobs.model import JobState
    from service.store.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()
    try:
        ids = await queue_training_jobs(store, data, model)
        workers = [start_worker(data, url, c, data / f"worker-{c}.log") for c in cores]
        try:
            while True:
                jobs = [await store.get_job(i) for i in ids]
                if all(j is not None and j.state.terminal for j in jobs):
                    break
                await asyncio.sleep(0.5)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(60)
        failed = [j for j in jobs if j is not None and j.state is not JobState.SUCCEEDED]
        if failed:
            raise RuntimeError(f"{failed[0].id}: {failed[0].error_message}")
        spans = [(j.started, j.finished) for j in jobs if j and j.started and j.finished]
        began, ended = min(s for s, _ in spans), max(e for _, e in spans)
        return JOBS / (ended - began) * 3600, statistics.mean(e - s for s, e in spans)
    finally:
        await store.close()


async def bare_trainers_per_hour(data: Path, model: "BaseModel", cores: list[int]) -> float:
    """Jobs per hour of the trainer alone, started as a worker starts it (`python -m trainer
    train`, one thread) with no worker, store or server around it: the same JOBS jobs dealt
    round-robin to `cores`, one trainer at a time on each, all cores at once."""
    from service.jobs.runner import CONFIG_FILE, trainer_environment

    env = trainer_environment(os.environ, 1, os.getpid(), 0)

    async def lane(core: int, directories: list[Path]) -> None:
        for directory in directories:
            with (directory / "trainer.log").open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    "taskset", "--cpu-list", str(core), sys.executable, "-m", "trainer", "train",
                    "--config", str(directory / CONFIG_FILE),
                    "--events", str(directory / "events.jsonl"),
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
                if await process.wait() != 0:
                    raise RuntimeError(f"trainer failed: see {directory / 'trainer.log'}")

    directories = [data / "jobs" / f"job-{n}" for n in range(JOBS)]
    for directory in directories:
        write_config(directory, data, model)
    began = time.perf_counter()
    await asyncio.gather(*(lane(c, directories[i :: len(cores)]) for i, c in enumerate(cores)))
    return JOBS / (time.perf_counter() - began) * 3600


def probe(kind: str) -> float:
    """Seconds of fixed single-thread work: "compute", fp32 matmuls whose operands fit a core's
    L2 (bound by the core); "memory", a scaled copy of 200 MB, 20 times (bound by memory
    bandwidth)."""
    import torch

    torch.set_num_threads(1)
    if kind == "compute":
        x, weights = torch.randn(64, 256), [torch.randn(256, 256) for _ in range(4)]
        began = time.perf_counter()
        for _ in range(PROBE_ROUNDS):
            for weight in weights:
                x @ weight
    else:
        source = torch.randn(50_000_000)
        target = torch.empty_like(source)
        began = time.perf_counter()
        for _ in range(20):
            torch.mul(source, 1.0001, out=target)
    return time.perf_counter() - began


def two_cores_vs_one(kind: str) -> float:
    """The machine's own scaling: `probe(kind)` on core 0 alone, then on cores 0 and 1 at
    once; twice the lone time over the slower of the pair (2.0: the cores share nothing)."""
    alone = child_result(kind, start_child(__file__, kind, core=0))
    pair = [start_child(__file__, kind, core=c) for c in (0, 1)]
    return 2 * alone / max(child_result(kind, child) for child in pair)


async def event_delays(url: str, target: str) -> list[float]:
    """Seconds from each event's commit here to its arrival through WatchJob on `target`."""
    from service.client.api import Client
    from service.jobs.model import Work
    from service.store.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()
    try:
        await store.create_job(new_job(9000))
        claimed = await store.claim_job("bench/0/writer", frozenset(Work), 600)
        assert claimed is not None
        arrivals: dict[int, float] = {}
        following = threading.Event()

        def follow() -> None:
            with Client(target, timeout=120) as client:
                for event in client.watch_job(claimed.id):
                    following.set()
                    if event.kind == "bench":
                        arrivals[int(event.data["n"])] = time.time()
                        if len(arrivals) == EVENTS:
                            return

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        await asyncio.to_thread(following.wait, 60)
        committed = {}
        for n in range(EVENTS):
            await store.append_event(claimed.lease, "bench", {"n": n})
            committed[n] = time.time()
            await asyncio.sleep(0.02)
        await asyncio.to_thread(watcher.join, 60)
        return [arrivals[n] - committed[n] for n in range(EVENTS)]
    finally:
        await store.close()


def shown(client: Any, ref: str) -> None:
    """Returns once the replica lists `ref` as the target of bench/prod."""
    while not any(
        "bench/prod" in a.aliases and a.ref == ref for a in client.list_adapters().adapters
    ):
        time.sleep(0.005)


async def alias_delays(url: str, target: str, data: Path, model: "BaseModel") -> list[float]:
    """Seconds from an alias move in the store here to the replica's ListAdapters showing it."""
    from service.adapters.publish import publish
    from service.client.api import Client
    from service.store.postgres import PostgresStore
    from tests.support import adapter_limits, make_adapter

    root = data / "adapters"
    for n in range(2):
        make_adapter(root / f"v{n}", model.path, seed=n)
    limits = adapter_limits(root, model.path, max_bytes=2**30)
    store = PostgresStore(url)
    await store.open()
    delays = []
    try:
        versions = [
            (await publish(store, limits, "bench/bot", f"v{n}", pin=False, created=0.0))[1]
            for n in range(2)
        ]
        with Client(target, timeout=60) as client:
            for move in range(ALIAS_MOVES):
                record = versions[move % 2]
                await store.set_alias("bench/prod", (record.name, record.version))
                moved = time.time()
                await asyncio.to_thread(shown, client, f"{record.name}@{record.version}")
                delays.append(time.time() - moved)
    finally:
        await store.close()
    return delays


async def submit_latency(store: "Store") -> float:
    """p50 seconds of `create_job` on an opened store."""
    seconds = []
    for n in range(SUBMITS):
        began = time.perf_counter()
        await store.create_job(new_job(n))
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


async def measure(model: "BaseModel", tmp: Path) -> tuple[dict[str, float], dict[str, float]]:
    from service.store.postgres import PostgresStore
    from service.store.sqlite import SqliteStore
    from tests.support import PostgresServer, ServerProcess, postgres_bin

    cluster_root = Path(tempfile.mkdtemp(prefix="adapterd-bench-pg-"))
    postgres = PostgresServer(cluster_root, postgres_bin(), fsync=True).start()
    try:
        one, one_job = await jobs_per_hour(postgres.create_database(), tmp / "one", model, [0])
        two, two_job = await jobs_per_hour(postgres.create_database(), tmp / "two", model, [0, 1])
        bare_one = await bare_trainers_per_hour(tmp / "bare-one", model, [0])
        bare_two = await bare_trainers_per_hour(tmp / "bare-two", model, [0, 1])

        url = postgres.create_database()
        replica = ServerProcess(
            tmp / "replica", MODEL, extra_flags=["--store-url", url, "--train-workers", "0"]
        ).start()
        try:
            events = await event_delays(url, replica.target)
            aliases = await alias_delays(url, replica.target, tmp / "replica", model)
        finally:
            replica.stop()

        sqlite = SqliteStore(tmp / "submit.db")
        shared = PostgresStore(postgres.create_database())
        for store in (sqlite, shared):
            await store.open()
        sqlite_p50, postgres_p50 = await submit_latency(sqlite), await submit_latency(shared)
        for store in (sqlite, shared):
            await store.close()
    finally:
        postgres.stop()
        shutil.rmtree(cluster_root, ignore_errors=True)
    figures = {
        "event_delay_p50_s": percentile(events, 0.5),
        "event_delay_p95_s": percentile(events, 0.95),
        "alias_propagation_p50_s": percentile(aliases, 0.5),
        "alias_propagation_p95_s": percentile(aliases, 0.95),
        "submit_p50_sqlite_s": sqlite_p50,
        "submit_p50_postgres_s": postgres_p50,
        "jobs_per_hour_one_worker": one,
        "jobs_per_hour_two_workers": two,
        "job_seconds_one_worker": one_job,
        "job_seconds_two_workers": two_job,
        "jobs_per_hour_bare_trainer_one_core": bare_one,
        "jobs_per_hour_bare_trainers_two_cores": bare_two,
    }
    ratios = {
        "two_workers_vs_one": two / one,
        "bare_trainers_two_cores_vs_one": bare_two / bare_one,
        "two_workers_of_bare_trainers": two / bare_two,
        "machine_two_cores_vs_one_compute": two_cores_vs_one("compute"),
        "machine_two_cores_vs_one_memory": two_cores_vs_one("memory"),
        "sqlite_vs_postgres_submit": sqlite_p50 / postgres_p50,
    }
    return figures, ratios


def main() -> None:
    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from trainer.hardware import describe_machine, resolve_precision

    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        report_child(probe(sys.argv[2]))
        return
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("scale_out needs two cores: one per worker")
    model = resolve_base_model(MODEL, ServerSettings().model_cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        figures, ratios = asyncio.run(measure(model, Path(tmp)))
    print("goals: event delay p95 <= 0.2 s, alias propagation p95 <= 1 s, two workers >= 1.6x")
    machine = describe_machine(trainer=resolve_precision("float32", "train", 1), trainer_threads=1)
    report("scale_out", figures, ratios, machine)


if __name__ == "__main__":
    main()
