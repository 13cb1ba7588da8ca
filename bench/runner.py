"""`bench run`: drive every (question, turn) through an engine into a run directory.

Order matters for honest failure: everything a user can get wrong (config, questions,
reference table, output folder, tokenizer, model) is checked before the run directory is
created, so bad input leaves nothing behind that looks like a result. Once turns run, each
finished turn is on disk before the next starts; Ctrl-C leaves a resumable directory.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench.config import RunConfig
from bench.conversation import ChatFormat, load_tokenizer, turn_messages
from bench.dataset import Question, QuestionSet, dataset_label, load_questions
from bench.engines import Engine, SamplingParams, create_engine, preflight_engine
from bench.errors import BenchError
from bench.records import (
    RecordWriter,
    TurnRecord,
    drop_torn_tail,
    latest_by_turn,
    read_records,
)
from bench.references import ReferenceTable, load_reference
from bench.report import write_results
from bench.rundir import (
    ChatTemplateInfo,
    DatasetInfo,
    DecodeSession,
    EngineRecord,
    Manifest,
    RunDir,
    RunTiming,
    Status,
    default_run_id,
    git_state,
    host_info,
    machine_load,
    manifest_reference,
    now_iso,
    package_versions,
    peak_rss_mb,
)
from bench.summary import Summary, summarize_run


class RunInterrupted(BenchError):
    exit_code = 130


@dataclass
class RunOutcome:
    run: RunDir
    summary: Summary
    output_tokens: int
    decode_s: float
    """Wall time of this invocation's decoding phase (turns overlap: not their sum)."""
    decoded_tokens: int
    """Output tokens of the turns this invocation decoded (a resume skips finished ones)."""
    wall_s: float


def quiet_libraries() -> None:
    """Libraries' own progress bars (e.g. GGUF dequantisation) only where a user watches."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def sampling_params(config: RunConfig) -> SamplingParams:
    return SamplingParams(
        temperature=config.sampling.temperature,
        max_tokens=config.sampling.max_tokens,
        draft_len=config.draft_len,
        seed=config.sampling.seed,
    )


async def run_turn(
    engine: Engine,
    chat: ChatFormat,
    config: RunConfig,
    question: Question,
    turn: int,
    history: Sequence[str],
) -> TurnRecord:
    """One turn through the engine, after the model's own outputs of the earlier turns
    (`history`). An engine fault becomes a failed record (kept, never averaged in, redone
    on resume); a user error (BenchError) stops the run."""
    messages = turn_messages(question, turn, config.conversation, history)
    prompt_ids = chat.prompt_ids(messages)
    key = (question.question_id, question.category, turn, len(prompt_ids))
    try:
        generation = await engine.generate(
            prompt_ids,
            sampling_params(config),
            messages=messages if engine.info.takes_messages else None,
        )
    except (BenchError, KeyboardInterrupt, asyncio.CancelledError):
        raise
    except Exception as err:  # an engine fault on this turn: recorded, not fatal
        return TurnRecord.failed(*key, error=f"{type(err).__name__}: {err}")
    record = TurnRecord.of(*key, generation)
    return record.model_copy(update={"reasoning_tokens": chat.reasoning_tokens(record.token_ids)})


async def drive(
    engine: Engine,
    chat: ChatFormat,
    config: RunConfig,
    questions: Sequence[Question],
    writer: RecordWriter,
    done: dict[tuple[int, int], TurnRecord],
    progress: tqdm,
) -> None:
    """Every turn of every question, in order; turn t always gets the question's own
    outputs of turns 1..t-1.

    Questions in flight: `concurrency`, or the engine's batch size when larger (a batching
    engine only batches what it is given)."""
    semaphore = asyncio.Semaphore(max(config.concurrency, engine.info.batch_size))

    async def one(question: Question) -> None:
        async with semaphore:
            history: list[str] = []
            for turn in range(1, len(question.turns) + 1):
                record = done.get((question.question_id, turn))
                if record is None or not record.ok:
                    record = await run_turn(engine, chat, config, question, turn, history)
                    writer.append(record)
                    progress.update(1)
                if not record.ok:
                    # the later turns cannot run without this turn's answer
                    progress.update(len(question.turns) - turn)
                    return
                history.append(record.text)

    await asyncio.gather(*(one(q) for q in questions))


def _load_reference(config: RunConfig) -> ReferenceTable | None:
    return load_reference(config.reference) if config.reference else None


@dataclass
class _Session:
    """This invocation's run directory and manifest; the one place its status is written."""

    run: RunDir
    manifest: Manifest
    started: float
    previous_wall_s: float

    def wall_s(self) -> float:
        return self.previous_wall_s + time.perf_counter() - self.started

    def record(self, status: Status, **update: object) -> None:
        self.manifest = self.manifest.model_copy(update={"status": status, **update})
        self.run.write_manifest(self.manifest)

    @contextmanager
    def failing_as_such(self) -> Iterator[None]:
        """Whatever stops the run inside leaves the manifest saying so: Ctrl-C `interrupted`
        (resumable), any error `failed`."""
        try:
            yield
        except KeyboardInterrupt:
            self.record("interrupted", wall_s=self.wall_s())
            raise RunInterrupted(
                f"interrupted; finished turns are saved in {self.run.path}: "
                f"python -m bench run --resume {self.run.path}"
            ) from None
        except Exception:
            self.record("failed")
            raise


def _new_manifest(
    run: RunDir,
    config: RunConfig,
    source: QuestionSet,
    questions: Sequence[Question],
    reference: ReferenceTable | None,
    config_path: str | None,
    command: Sequence[str],
) -> Manifest:
    return Manifest(
        run_id=run.path.name,
        config=config,
        config_path=config_path,
        command=list(command),
        reference_table=reference,
        dataset=dataset_info(source, questions),
        started_at=now_iso(),
    )


def dataset_info(source: QuestionSet, questions: Sequence[Question]) -> DatasetInfo:
    """What the manifest records of the questions: the source, its hash, the dataset and
    sample, and each question's id and turn count (MT-Bench's record keeps its old shape)."""
    counts = [len(q.turns) for q in questions]
    mt_bench = source.name == "mt-bench"
    return DatasetInfo(
        source=source.source,
        sha256=source.sha256,
        question_ids=[q.question_id for q in questions],
        name=source.name,
        categories=None if mt_bench else list(source.categories),
        turn_counts=None if mt_bench and all(c == 2 for c in counts) else counts,
        sample=source.sample,
    )


def _template_info(config: RunConfig, chat: ChatFormat) -> ChatTemplateInfo:
    return ChatTemplateInfo(
        sha256=chat.template_sha256,
        reasoning_effort=config.conversation.reasoning_effort,
        reasoning_effort_used=chat.reasoning_effort_used,
        turn2_history=config.conversation.turn2_history,
        system_prompt=config.conversation.system_prompt,
    )


def _decode(
    session: _Session,
    engine: Engine,
    chat: ChatFormat,
    config: RunConfig,
    questions: Sequence[Question],
    quiet: bool,
) -> tuple[dict[tuple[int, int], TurnRecord], float]:
    """Every turn not yet finished, appended to records.jsonl; returns the turns finished
    before this invocation and the seconds spent decoding."""
    run = session.run
    drop_torn_tail(run.records_path)
    existing = read_records(run.records_path) if run.records_path.exists() else []
    done = latest_by_turn(existing)
    progress = tqdm(
        total=sum(len(q.turns) for q in questions),
        initial=sum(1 for r in done.values() if r.ok),
        unit="turn",
        desc=config.dataset.name,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    with RecordWriter(run.records_path) as writer, progress:
        asyncio.run(drive(engine, chat, config, questions, writer, done, progress))
    return done, time.perf_counter() - started


def _timing(previous: RunTiming | None, config: RunConfig, engine: Engine) -> RunTiming:
    """The manifest's timing with a new session opened (a resume keeps the earlier ones)."""
    details = engine.info.details
    return RunTiming(
        concurrency=config.concurrency,
        batch_size=engine.info.batch_size,
        in_flight=max(config.concurrency, engine.info.batch_size),
        threads=details.get("threads"),
        device=details.get("device"),
        sessions=[
            *(previous.sessions if previous else []),
            DecodeSession(load_start=machine_load()),
        ],
    )


def _close_session(timing: RunTiming, decode_s: float, decoded_tokens: int) -> RunTiming:
    last = timing.sessions[-1].model_copy(
        update={"load_end": machine_load(), "decode_s": decode_s, "decoded_tokens": decoded_tokens}
    )
    return timing.model_copy(update={"sessions": [*timing.sessions[:-1], last]})


def execute(
    config: RunConfig | None,
    *,
    out: Path | None = None,
    resume: Path | None = None,
    quiet: bool = False,
    config_path: str | None = None,
    command: Sequence[str] = (),
) -> RunOutcome:
    """Run (or resume) a benchmark and write its run directory."""
    started = time.perf_counter()
    run, manifest, config = _open_run(config, out, resume)
    preflight_engine(config)
    source, questions = load_questions(config.dataset)
    if manifest is not None and [q.question_id for q in questions] != manifest.dataset.question_ids:
        raise BenchError(
            f"the questions now selected differ from those of {run.path}; "
            "the dataset changed since the run started"
        )
    reference = _load_reference(config)
    if reference is not None and reference.dataset != config.dataset.name:
        raise BenchError(
            f"the reference table {config.reference} measured {dataset_label(reference.dataset)} "
            f"and this run sends {dataset_label(config.dataset.name)}; drop --reference or "
            "give a table of the same dataset"
        )
    if quiet or not sys.stderr.isatty():
        quiet_libraries()
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    template = _template_info(config, chat)
    engine = create_engine(config, chat)
    try:
        if manifest is None:
            RunDir.create(run.path)
            manifest = _new_manifest(
                run, config, source, questions, reference, config_path, command
            )
        elif manifest.chat_template and manifest.chat_template.sha256 != template.sha256:
            raise BenchError(f"the chat template changed since {run.path} started")
        session = _Session(run, manifest, started, manifest.wall_s or 0.0)
        session.record(
            "running",
            chat_template=template,
            engine=EngineRecord(
                name=engine.info.name, version=engine.info.version, details=engine.info.details
            ),
            packages=package_versions(),
            git=git_state(),
            host=host_info(),
            timing=_timing(manifest.timing, config, engine),
        )
        with session.failing_as_such():
            done, decode_s = _decode(session, engine, chat, config, questions, quiet)
    finally:
        asyncio.run(engine.aclose())
    return _finish(session, config, questions, reference, done, decode_s)


def _open_run(
    config: RunConfig | None, out: Path | None, resume: Path | None
) -> tuple[RunDir, Manifest | None, RunConfig]:
    """The run directory to write: a new one (checked, not yet created), or the one to
    resume with its manifest and the config it started with."""
    if resume is not None:
        run = RunDir.open(resume)
        manifest = run.read_manifest()
        return run, manifest, manifest.config
    assert config is not None
    run = RunDir(out or Path("results") / "runs" / default_run_id(config))
    RunDir.check_can_create(run.path)
    return run, None, config


def _finish(
    session: _Session,
    config: RunConfig,
    questions: Sequence[Question],
    reference: ReferenceTable | None,
    done: dict[tuple[int, int], TurnRecord],
    decode_s: float,
) -> RunOutcome:
    """Summary, report and the manifest's final status from records.jsonl; the outcome."""
    run = session.run
    records = read_records(run.records_path)
    latest = {key: r for key, r in latest_by_turn(records).items() if r.ok}
    decoded_tokens = sum(
        r.output_tokens for key, r in latest.items() if key not in done or not done[key].ok
    )
    assert session.manifest.timing is not None
    timing = _close_session(session.manifest.timing, decode_s, decoded_tokens)
    session.record("running", timing=timing)
    summary = summarize_run(records, session.manifest, timing.aggregate())
    final = {
        "status": "complete" if summary.complete else "incomplete",
        "finished_at": now_iso(),
        "wall_s": session.wall_s(),
        "peak_rss_mb": peak_rss_mb(),
    }
    with session.failing_as_such():
        write_results(run, summary, session.manifest.model_copy(update=final), reference)
    session.record(**final)
    return RunOutcome(
        run=run,
        summary=summary,
        output_tokens=sum(r.output_tokens for r in latest.values()),
        decode_s=decode_s,
        decoded_tokens=decoded_tokens,
        wall_s=session.manifest.wall_s or 0.0,
    )


def rebuild_report(path: Path) -> Summary:
    """`bench report RUN_DIR`: summary, report and plots again from records.jsonl alone."""
    run = RunDir.open(path)
    manifest = run.read_manifest()
    records = read_records(run.records_path)
    aggregate = manifest.timing.aggregate() if manifest.timing else None
    summary = summarize_run(records, manifest, aggregate)
    write_results(run, summary, manifest, manifest_reference(manifest))
    return summary
