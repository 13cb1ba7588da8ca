"""`launch:`: the harness starts the server, waits for /health, runs, and always stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_server import chat_format, free_port, tokenizer_dir, write_config

from bench.config import LaunchConfig, load_config
from bench.engines import SamplingParams
from bench.engines.launch import LaunchedServer, build_command, extra_llm_api_options
from bench.engines.openai_compat import OpenAIEngine
from bench.errors import BenchError
from bench.records import read_records

FAKE = str(Path(__file__).parent / "fake_server.py")
REPO = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as stopped.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def fake_launch(tokenizer_dir: Path, tmp_path: Path, delay: float = 0.0) -> dict:
    return {
        "command": [
            sys.executable,
            FAKE,
            "--port",
            "{port}",
            "--draft-len",
            "{draft_len}",
            "--tokenizer",
            str(tokenizer_dir),
            "--delay",
            str(delay),
            "--pid-file",
            str(tmp_path / "server.pid"),
        ],
        "health_timeout_s": 60,
        "stop_timeout_s": 5,
    }


def test_launched_server_gets_the_draft_len_runs_and_is_stopped(
    tokenizer_dir, write_config, tmp_path
):
    engine = {
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}",
        "launch": fake_launch(tokenizer_dir, tmp_path),
    }
    config = load_config(write_config(engine), {"draft_len": 2})
    openai_engine = OpenAIEngine(config, chat_format(tokenizer_dir))
    pid = int((tmp_path / "server.pid").read_text())
    try:
        assert alive(pid)
        generation = asyncio.run(openai_engine.generate([3, 4], SamplingParams(0.0, 8, 2)))
        assert max(generation.steps) <= 3  # the served draft length is the run's: 2
        assert "--draft-len" in openai_engine.info.details["launched"]["command"]
    finally:
        asyncio.run(openai_engine.aclose())
    assert not alive(pid)


def test_ctrl_c_stops_the_launched_server(tokenizer_dir, write_config, tmp_path):
    engine = {
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}",
        "launch": fake_launch(tokenizer_dir, tmp_path, delay=2.0),
    }
    config = write_config(engine)  # 8 turns of 2 s steps: a minute, far longer than Ctrl-C takes
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A shell runs background jobs with SIGINT ignored, and a child inherits that;
        # give the run the default disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600  # generous: CI machines are shared and slow
    records = tmp_path / "run" / "records.jsonl"
    while not (records.exists() and records.read_text().strip()):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run never finished a turn"
        time.sleep(0.2)
    pid = int((tmp_path / "server.pid").read_text())
    assert alive(pid)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert b"--resume" in err
    assert not alive(pid)
    assert read_records(records)  # what finished is kept


def test_health_never_ready_shows_the_log_tail_and_stops(tmp_path):
    launch = LaunchConfig(
        command=[
            sys.executable,
            "-c",
            "import threading; print('loading weights', flush=True); threading.Event().wait()",
            "{draft_len}",
        ],
        health_timeout_s=1.5,
        stop_timeout_s=5,
    )
    server = LaunchedServer(launch, f"http://127.0.0.1:{free_port()}", 3)
    server.start()
    process = server.process
    # The health deadline starts at wait_healthy: wait first (however slowly the machine
    # starts Python) for the line the error must show; the server itself never gets ready.
    deadline = time.monotonic() + 120
    while b"loading weights" not in server.log_path.read_bytes():
        assert process.poll() is None and time.monotonic() < deadline, "no log line"
        time.sleep(0.1)
    with pytest.raises(
        BenchError, match="(?s)did not answer .*/health within 2 s.*loading weights"
    ):
        try:
            server.wait_healthy()
        finally:
            server.stop()
    assert process.poll() is not None


def test_server_that_exits_reports_its_code_and_log(tmp_path):
    launch = LaunchConfig(
        command=[
            sys.executable,
            "-c",
            "import sys; print('CUDA error: no GPU'); sys.exit(3)",
            "{draft_len}",
        ]
    )
    server = LaunchedServer(launch, f"http://127.0.0.1:{free_port()}", 3)
    server.start()
    with pytest.raises(BenchError, match="(?s)exited with code 3.*CUDA error: no GPU"):
        server.wait_healthy()


def test_draft_len_must_reach_the_command():
    launch = LaunchConfig(command=["vllm", "serve", "m", "--port", "{port}"])
    with pytest.raises(BenchError, match="never receives the draft length"):
        build_command(launch, "http://127.0.0.1:8000", 3, None)


def test_extra_llm_api_yaml_gets_the_draft_len(tmp_path):
    card = tmp_path / "extra.yml"
    card.write_text(
        yaml.safe_dump(
            {
                "speculative_config": {
                    "decoding_type": "Eagle",
                    "max_draft_len": 3,
                    "speculative_model_dir": "/ckpt",
                }
            }
        )
    )
    launch = LaunchConfig(
        command=["trtllm-serve", "m", "--extra_llm_api_options", "{extra_llm_api_options}"],
        extra_llm_api_options=str(card),
    )
    options = extra_llm_api_options(launch, 5)
    assert options == {
        "speculative_config": {
            "decoding_type": "Eagle",
            "max_draft_len": 5,
            "speculative_model_dir": "/ckpt",
        },
        "stream_interval": 1,  # one chunk per iteration, whatever the file said
    }
    argv = build_command(launch, "http://0.0.0.0:8123", 5, tmp_path / "written.yml")
    assert argv[-1] == str(tmp_path / "written.yml")


def test_kimi_config_reproduces_the_card_recipe_and_fails_clearly_without_trtllm(tmp_path):
    config = load_config(REPO / "configs" / "kimi-k2-thinking-eagle3.yaml", {"draft_len": 3})
    launch = config.engine.launch
    options = extra_llm_api_options(launch, 3)
    assert options["speculative_config"] == {
        "decoding_type": "Eagle3",
        "max_draft_len": 3,
        "speculative_model": "nvidia/Kimi-K2-Thinking-Eagle3",
    }
    assert options["enable_iter_perf_stats"] is True and options["stream_interval"] == 1
    argv = build_command(launch, config.engine.base_url, 3, Path("x.yml"))
    assert argv == [
        "trtllm-serve",
        "nvidia/Kimi-K2-Thinking-NVFP4",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--backend",
        "pytorch",
        "--max_batch_size",
        "32",
        "--max_num_tokens",
        "8192",
        "--max_seq_len",
        "8192",
        "--tp_size",
        "4",
        "--extra_llm_api_options",
        "x.yml",
    ]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--config",
            "configs/kimi-k2-thinking-eagle3.yaml",
            "--draft-len",
            "3",
            "--out",
            str(tmp_path / "r"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "install TensorRT-LLM" in lines[0], run.stderr
    assert not (tmp_path / "r").exists()
